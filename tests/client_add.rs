//! `dtun client add NAME`: the client goes into the server's config file with a fresh key file
//! and a fixed address, the running server reloads, and the printed config connects; adds
//! racing each other all land; what could be abused (a planted key file, a name that would
//! break the file, a second add of one name) is refused and changes nothing. Network
//! namespaces of the test's own (`common/mod.rs`, prefix `ca`).

mod common;

use common::{DTUN, Netns, TestDir, Topo, path_str};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;

const SERVER: &str = "port = 4443\npool = \"10.92.0.0/24\"\n\n[clients.alice]\nkey = \"alice-key-0123456789\"\naddr = \"10.92.0.10\"\n";

fn add(ns: &Netns, conf: &str, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["client", "add", name, "-config", conf];
    args.extend_from_slice(extra);
    ns.run(DTUN, &args)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn check(conf: &str) {
    let o = std::process::Command::new(DTUN)
        .args(["-config", conf, "-check"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
}

/// The value of `key = "…"` in a printed client config.
fn printed_key(toml: &str) -> String {
    toml.lines()
        .find_map(|l| l.strip_prefix("key = \""))
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no key in:\n{toml}"))
        .to_string()
}

#[test]
fn an_added_client_connects_after_the_reload() {
    common::need_root!();
    let topo = Topo::pair("caup");
    let d = topo.dir.path();
    let conf = d.join("srv.toml");
    std::fs::write(&conf, SERVER).unwrap();
    let conf = path_str(&conf).to_string();
    let _server = common::start_server(&topo.server, 4443, &["-config", &conf]);

    let host = format!("{}:4443", Topo::server_ip(0));
    let o = add(&topo.server, &conf, "bob", &["-host", &host, "-qr"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("client bob added"), "{err}");
    assert!(
        err.contains("reloaded"),
        "the server was not reloaded: {err}"
    );
    let key = printed_key(&out);
    assert_eq!(key.len(), 64, "{out}");
    // The QR code is drawn with half blocks after the config.
    assert!(out.contains('█') || out.contains('▀'), "{out}");
    let key_file = d.join("clients/bob.key");
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), key);
    let saved = std::fs::read_to_string(&conf).unwrap();
    assert!(saved.starts_with(SERVER), "the old text changed:\n{saved}");
    assert!(saved.contains("[clients.\"bob\"]\nkey_file = \"clients/bob.key\"\naddr = \"10.92.0."));
    check(&conf);

    // The printed config, as the client saves it, connects.
    let toml: String = out
        .lines()
        .take_while(|l| !l.contains('█'))
        .collect::<Vec<_>>()
        .join("\n");
    let cconf = d.join("bob.toml");
    std::fs::write(&cconf, format!("{toml}\nkeepalive = \"1s\"\n")).unwrap();
    let _client = common::start_client(topo.client(), &["-config", path_str(&cconf)]);
    let (local, peer) = common::wait_p2p(topo.client(), &common::only_tun(topo.client()));
    assert!(
        saved.contains(&format!("addr = \"{local}\"")),
        "{local} not in:\n{saved}"
    );
    assert!(
        topo.client().ping_ok(&peer.to_string(), 3),
        "no ping to {peer}"
    );
}

#[test]
fn racing_adds_all_land_and_abuse_is_refused() {
    common::need_root!();
    let dir = TestDir::new("carace");
    let ns = Netns::new("carace", &dir);
    let d = dir.path();
    let conf_path = d.join("srv.toml");
    std::fs::write(&conf_path, SERVER).unwrap();
    std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let conf = path_str(&conf_path).to_string();

    // Eight adds at once: every one lands, each with its own address.
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let conf = conf.clone();
            let ns_name = ns.name().to_string();
            std::thread::spawn(move || {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &ns_name, DTUN, "client", "add"])
                    .arg(format!("c{i}"))
                    .args(["-config", &conf])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for r in runs {
        let o = r.join().unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let saved = std::fs::read_to_string(&conf_path).unwrap();
    let mut addrs: Vec<&str> = saved.lines().filter(|l| l.starts_with("addr = ")).collect();
    assert_eq!(addrs.len(), 9, "{saved}");
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 9, "two clients share an address:\n{saved}");
    check(&conf);

    let unchanged = |why: &str| {
        assert_eq!(std::fs::read_to_string(&conf_path).unwrap(), saved, "{why}");
    };
    // A second add of one name.
    let (_, err) = text(&add(&ns, &conf, "c3", &[]));
    assert!(err.contains("already"), "{err}");
    unchanged("a second c3");
    // Names that would break out of the table.
    for bad in ["x\"]\nnat = true\n[y", ".b", "", "back\\slash"] {
        let o = add(&ns, &conf, bad, &[]);
        assert!(!o.status.success(), "{bad:?} accepted");
        unchanged(bad);
    }
    // A key file planted (as a symlink) where the new one would go is never written through.
    let victim = d.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, d.join("clients/eve.key")).unwrap();
    let (_, err) = text(&add(&ns, &conf, "eve", &[]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    unchanged("a planted key file");
    // The config keeps its owner and mode across adds.
    let meta = std::fs::metadata(&conf_path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640, "the config's mode changed");
}

/// With a master secret, the key is derived (nothing to store): the table holds the address
/// only, the printed key is `dtun key derive`'s, and the file still passes `-check`.
#[test]
fn with_a_master_secret_the_key_is_derived() {
    common::need_root!();
    let dir = TestDir::new("camaster");
    let ns = Netns::new("camaster", &dir);
    let d = dir.path();
    std::fs::write(d.join("master.key"), "master-secret-0123456789abcdef\n").unwrap();
    let conf_path = d.join("srv.toml");
    std::fs::write(
        &conf_path,
        "port = 4443\nmaster_key_file = \"master.key\"\n",
    )
    .unwrap();
    let conf = path_str(&conf_path).to_string();
    let o = add(&ns, &conf, "phone", &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let saved = std::fs::read_to_string(&conf_path).unwrap();
    assert!(
        saved.contains("[clients.\"phone\"]\naddr = \"10.86."),
        "{saved}"
    );
    assert!(!d.join("clients").exists(), "a key file was written");
    let derived = std::process::Command::new(DTUN)
        .args([
            "key",
            "derive",
            "-key-file",
            path_str(&d.join("master.key")),
            "-id",
            "phone",
        ])
        .output()
        .unwrap();
    assert_eq!(
        printed_key(&out),
        String::from_utf8_lossy(&derived.stdout).trim()
    );
    check(&conf);
}

/// An id that is not a safe file name (`/` in it, a leading dot) is
/// refused with a message, and no key file lands anywhere (before, `dtun client add
/// /DIR/evil` wrote `/DIR/evil.key`); a dotted or `@` id, a safe file name, is added.
#[test]
fn ids_that_are_not_file_names_are_refused() {
    common::need_root!();
    let dir = TestDir::new("caname");
    let ns = Netns::new("caname", &dir);
    let d = dir.path();
    let conf_path = d.join("srv.toml");
    std::fs::write(&conf_path, SERVER).unwrap();
    let conf = path_str(&conf_path).to_string();
    std::fs::create_dir_all(d.join("elsewhere")).unwrap();
    std::fs::create_dir_all(d.join("clients/sub")).unwrap();
    let evil = d.join("elsewhere/evil");
    let evil = path_str(&evil).to_string();
    let saved = std::fs::read_to_string(&conf_path).unwrap();
    for bad in [evil.as_str(), "sub/x", "..", ".hidden", "a b"] {
        let o = add(&ns, &conf, bad, &[]);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{bad:?} accepted: {err}");
        assert!(err.contains("file name"), "{bad:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(&conf_path).unwrap(),
            saved,
            "{bad:?}"
        );
    }
    assert!(
        !d.join("elsewhere/evil.key").exists(),
        "a key file outside clients/"
    );
    assert!(
        !d.join("clients/sub/x.key").exists(),
        "a key file in a subdirectory"
    );
    let o = add(&ns, &conf, "bob.laptop@home", &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(d.join("clients/bob.laptop@home.key").exists());
    check(&conf);
}
