//! `-config FILE` and `-check`: the examples pass, bad files are refused naming the file, the
//! line and the key, flags override the file, the instance comes from the file's stem; and a
//! server and a client started from config files only, in network namespaces of the test's
//! own (`common/mod.rs`, prefix `cf`).
//!
//! Run one test: `cargo test --test config_file examples -- --nocapture`.

mod common;

use common::{DTUN, TestDir, Topo, UP, path_str, wait_for};
use std::path::Path;
use std::process::Command;

/// `dtun ARGS -check`: (success, stdout + stderr).
fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(DTUN)
        .args(args)
        .arg("-check")
        .env_remove("DTUN_KEY")
        .output()
        .expect("run dtun");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    path_str(&p).to_string()
}

/// Each example in `examples/` passes `-check` once the files it names exist: the test puts
/// them in a temp dir and points the example's `/etc/dtun/` there. Without them, the check
/// fails and names the missing file (so the check does look at them).
#[test]
fn examples_pass_check() {
    let dir = TestDir::new("cfex");
    let etc = dir.path().join("etc");
    let root = env!("CARGO_MANIFEST_DIR");
    for (example, files) in [
        (
            "server.toml",
            &["master.key", "clients/laptop.key", "clients/office.key"][..],
        ),
        (
            "full-tunnel-client.toml",
            &["laptop.key", "exclude.txt"][..],
        ),
        (
            "site-to-site-client.toml",
            &["office.key", "office-up.sh"][..],
        ),
    ] {
        let text = std::fs::read_to_string(format!("{root}/examples/{example}")).unwrap();
        let text = text.replace("/etc/dtun/", &format!("{}/", etc.display()));
        let conf = write(dir.path(), example, &text);
        let (ok, out) = check(&["-config", &conf]);
        assert!(!ok, "{example} passed without {files:?}: {out}");
        assert!(files.iter().any(|f| out.contains(f)), "{example}: {out}");
        for f in files {
            let body = match *f {
                "exclude.txt" => "# kept local\n10.99.0.0/16\n",
                "office-up.sh" => "#!/bin/sh\nexit 0\n",
                _ => "0123456789abcdef0123456789abcdef\n",
            };
            let p = write(&etc, f, body);
            use std::os::unix::fs::PermissionsExt;
            let mode = if f.ends_with(".sh") { 0o755 } else { 0o600 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let (ok, out) = check(&["-config", &conf]);
        assert!(ok, "{example}: {out}");
        assert_eq!(out.lines().count(), 1, "{example}: one line: {out}");
        assert!(out.contains("is OK"), "{example}: {out}");
        let stem = example.trim_end_matches(".toml");
        assert!(
            out.contains(&format!("instance {stem}")),
            "{example}: {out}"
        );
    }
}

/// An unknown key, a wrong type, a bad CIDR (at the top and in a client), a bad value and a
/// fixed address outside the pool: each refused with the file, the line and the key.
#[test]
fn bad_files_name_the_file_line_and_key() {
    let dir = TestDir::new("cfbad");
    let head = "key = \"shared-key-0123456789\"\n# a comment\n";
    for (name, body, line, key) in [
        ("unknown", "port = 443\nbogus = 1\n", 4, "bogus"),
        ("type", "port = \"443\"\n", 3, "port"),
        ("cidr", "port = 443\npool = \"10.86.0.0/33\"\n", 4, "pool"),
        (
            "lans",
            "[clients.laptop]\nkey = \"laptop-key-0123456789\"\nlans = [\"192.168.1.0/24\", \"192.168.300.0/24\"]\n",
            5,
            "clients.laptop.lans",
        ),
        (
            "ckey",
            "[clients.laptop]\nkey = \"laptop-key-0123456789\"\nadr = \"10.86.0.10\"\n",
            5,
            "clients.laptop.adr",
        ),
        ("dur", "linger = \"2 weeks\"\n", 3, "linger"),
        (
            "onoff",
            "client_to_client = \"yes\"\n",
            3,
            "client_to_client",
        ),
        ("mtu", "mtu = 9000\n", 3, "mtu"),
        ("pool6", "pool6 = \"ff02::/64\"\n", 3, "pool6"),
        (
            "peernet",
            "peernet = [\"192.168.1.0/24\", \"fd00::/129\"]\n",
            3,
            "peernet",
        ),
        (
            "addr6",
            "[clients.laptop]\nkey = \"laptop-key-0123456789\"\naddr6 = \"10.86.0.11\"\n",
            5,
            "clients.laptop.addr6",
        ),
        (
            "addr",
            "[clients.laptop]\nkey = \"laptop-key-0123456789\"\naddr = \"10.86.0.11\"\n",
            3,
            "[clients.laptop]",
        ),
    ] {
        let conf = write(
            dir.path(),
            &format!("{name}.toml"),
            &format!("{head}{body}"),
        );
        let (ok, out) = check(&["-config", &conf]);
        assert!(!ok, "{name}: accepted: {out}");
        let want = format!("{conf} line {line}: ");
        assert!(out.contains(&want), "{name}: want {want:?} in {out}");
        assert!(out.contains(key), "{name}: want key {key:?} in {out}");
    }
    // A client in the config file and in -clients: an error naming both.
    let creds = write(dir.path(), "clients", "laptop key=laptop-key-0123456789\n");
    let conf = write(
        dir.path(),
        "both.toml",
        "clients_file = \"clients\"\n[clients.laptop]\nkey = \"other-key-0123456789\"\n",
    );
    let (ok, out) = check(&["-config", &conf]);
    assert!(
        !ok && out.contains("laptop") && out.contains(&creds),
        "{out}"
    );
    // A missing file.
    let (ok, out) = check(&["-config", "/nonexistent/dtun.toml"]);
    assert!(!ok && out.contains("/nonexistent/dtun.toml"), "{out}");
}

/// Flags on the command line override the file; the instance is -instance, else the file's
/// `instance`, else its stem, else `dtun`; relative paths are the file's directory's.
#[test]
fn flags_override_the_file_and_the_instance_comes_from_the_stem() {
    let dir = TestDir::new("cfov");
    write(dir.path(), "sub/k", "0123456789abcdef0123\n");
    let conf = write(
        dir.path(),
        "sub/edge-1.toml",
        "key_file = \"k\"\nport = 4443\npool = \"10.90.0.0/24\"\n",
    );
    let (ok, out) = check(&["-config", &conf]);
    assert!(ok, "{out}");
    assert!(
        out.contains("port 4443") && out.contains("pool 10.90.0.0/24"),
        "{out}"
    );
    assert!(out.contains("instance edge-1"), "{out}");
    let (ok, out) = check(&["-config", &conf, "-port", "5555", "-instance", "other"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("port 5555") && out.contains("pool 10.90.0.0/24"),
        "{out}"
    );
    assert!(out.contains("instance other"), "{out}");
    // Go-style `-flag=value` too, and a -key on the command line replaces the file's key_file.
    let (ok, out) = check(&["-config", &conf, "-port=6000", "-key", "cli-key-0123456789"]);
    assert!(ok && out.contains("port 6000"), "{out}");
    // DTUN_KEY beats the file's key_file too (here one that does not exist).
    let missing = write(dir.path(), "sub/m.toml", "key_file = \"no-such-key\"\n");
    let (ok, out) = check(&["-config", &missing]);
    assert!(!ok && out.contains("no-such-key"), "{out}");
    let out = Command::new(DTUN)
        .args(["-config", &missing, "-check"])
        .env("DTUN_KEY", "env-key-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The file's own instance key beats the stem; no file: `dtun`.
    let named = write(
        dir.path(),
        "sub/x.toml",
        "key_file = \"k\"\ninstance = \"named\"\n",
    );
    let (ok, out) = check(&["-config", &named]);
    assert!(ok && out.contains("instance named"), "{out}");
    let (ok, out) = check(&["-key", "cli-key-0123456789"]);
    assert!(ok && out.contains("instance dtun"), "{out}");
    // A stem that is no instance name: told how to fix it.
    let bad = write(dir.path(), "sub/a.b c.toml", "key_file = \"k\"\n");
    let (ok, out) = check(&["-config", &bad]);
    assert!(!ok && out.contains("-instance"), "{out}");
    // -check without -config checks the flags.
    let (ok, out) = check(&[
        "-key",
        "k0123456789abcdef",
        "-pool",
        "10.1.0.0/30",
        "-up",
        "/nonexistent-up",
    ]);
    assert!(!ok && out.contains("/nonexistent-up"), "{out}");
}

/// A server and a client started from config files only (no other flag): the tunnel comes up
/// with the file's fixed address, and a SIGHUP to the client is ignored (logged), not fatal.
#[test]
fn server_and_client_from_config_files_only() {
    common::need_root!();
    let topo = Topo::pair("cfe2e");
    let d = topo.dir.path();
    write(d, "laptop.key", "laptop-key-0123456789abcdef\n");
    let sconf = write(
        d,
        "srv.toml",
        "port = 4443\npool = \"10.91.0.0/24\"\n\n[clients.laptop]\nkey_file = \"laptop.key\"\naddr = \"10.91.0.20\"\n",
    );
    let cconf = write(
        d,
        "laptop.toml",
        &format!(
            "host = \"{}\"\nport = 4443\nid = \"laptop\"\nkey_file = \"laptop.key\"\nkeepalive = \"1s\"\n",
            Topo::server_ip(0)
        ),
    );
    let _server = common::start_server(&topo.server, 4443, &["-config", &sconf]);
    let mut client = common::start_client(topo.client(), &["-config", &cconf]);
    let dev = common::only_tun(topo.client());
    let (local, peer) = common::wait_p2p(topo.client(), &dev);
    assert_eq!(local.to_string(), "10.91.0.20");
    assert!(
        topo.client().ping_ok(&peer.to_string(), 3),
        "no ping to {peer}"
    );
    client.signal("HUP");
    wait_for(UP, "the client to log the ignored SIGHUP", || {
        client.log().contains("SIGHUP ignored")
    });
    common::assert_running(&mut client, "client after SIGHUP");
    assert!(
        topo.client().ping_ok(&peer.to_string(), 2),
        "no ping after SIGHUP"
    );
    // `accept_pool` narrows what the client takes: the server's 10.91.0.20 is refused.
    client.stop(UP);
    let strict = write(
        d,
        "strict.toml",
        &format!(
            "host = \"{}\"\nport = 4443\nid = \"laptop\"\nkey_file = \"laptop.key\"\naccept_pool = [\"10.99.0.0/24\", \"fd99::/64\"]\n",
            Topo::server_ip(0)
        ),
    );
    let mut strict = topo.client().spawn(DTUN, &["-config", &strict], &[]);
    let status = strict.wait_exit(UP).expect("the strict client exits");
    let log = strict.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("local 10.91.0.20 is outside -accept-pool 10.99.0.0/24,fd99::/64"),
        "{log}"
    );
}

/// The slips an operator makes get the right form or a precise answer: a single DNS server as a
/// string is taken, a misspelt key gets a suggestion, and every CIDR flag speaks the same way.
#[test]
fn slips_get_the_right_form() {
    let dir = TestDir::new("cfslip");
    let head = "key = \"shared-key-0123456789\"\n";
    let conf = write(
        dir.path(),
        "dns.toml",
        &format!("{head}dns = \"10.220.1.10\"\n"),
    );
    let (ok, out) = check(&["-config", &conf]);
    assert!(ok, "a one-server dns string is refused: {out}");
    let conf = write(dir.path(), "natt.toml", &format!("{head}natt = true\n"));
    let (ok, out) = check(&["-config", &conf]);
    assert!(
        !ok && out.contains("line 2: unknown key natt: did you mean `nat`?"),
        "{out}"
    );
    for (args, says) in [
        (
            &["-pool", "10.220.0.0/33"][..],
            "prefix length 33 is longer than 32",
        ),
        (
            &["-pool", "10.220.0.1/16"][..],
            "did you mean 10.220.0.0/16?",
        ),
        (
            &["-host", "h", "-route", "10.220.1.5/24"][..],
            "did you mean 10.220.1.0/24?",
        ),
        (
            &["-host", "h", "-peernet", "192.168.1.0/2x"][..],
            "bad -peernet: \"192.168.1.0/2x\": the prefix length \"2x\" is not a number",
        ),
    ] {
        let mut all = vec!["-key", "shared-key-0123456789"];
        all.extend_from_slice(args);
        let (ok, out) = check(&all);
        assert!(!ok && out.contains(says), "{args:?}: {out}");
        assert!(!out.contains("peernet message"), "{args:?}: {out}");
    }
}

/// A config file the service's user cannot read: the message says how to make it readable.
#[test]
fn an_unreadable_config_says_how_to_fix_it() {
    common::need_root!();
    let dir = TestDir::new("cfperm");
    let conf = write(dir.path(), "srv.toml", "key = \"shared-key-0123456789\"\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
            DTUN,
            "-config",
            &conf,
            "-check",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("chown root:dtun {conf} && chmod 0640 {conf}")),
        "{err}"
    );
}

fn chmod(p: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One check of every secret and script, in `-check`: a config file with
/// an inline key and a `[clients.ID] key_file` readable by everyone are warned about, naming
/// `chmod 600 FILE` (before the fix these warnings were issued before logging was set up and
/// lost); a secret writable by its group or others is refused; a script run as root that
/// others can write, that root does not own, or that lies in a directory others can write,
/// is refused, each saying what to do.
#[test]
fn secrets_and_scripts_are_checked_with_what_to_do() {
    common::need_root!();
    let dir = TestDir::new("cfperm");
    let d = dir.path();
    let laptop = write(d, "laptop.key", "laptop-key-0123456789abcdef\n");
    chmod(&laptop, 0o644);
    let conf = write(
        d,
        "server.toml",
        &format!(
            "key = \"shared-key-0123456789abcdef\"\n[clients.laptop]\nkey_file = \"{laptop}\"\n"
        ),
    );
    chmod(&conf, 0o644);
    let (ok, out) = check(&["-config", &conf]);
    assert!(ok, "{out}");
    for f in [&conf, &laptop] {
        assert!(
            out.contains(&format!("{f} is readable by every user: chmod 600 {f}")),
            "{f}: {out}"
        );
    }
    chmod(&conf, 0o600);
    chmod(&laptop, 0o600);
    let (ok, out) = check(&["-config", &conf]);
    assert!(ok && !out.contains("readable"), "{out}");

    // Writable by others than the owner: refused.
    let key = write(d, "key", "shared-key-0123456789abcdef\n");
    for mode in [0o620, 0o606] {
        chmod(&key, mode);
        let (ok, out) = check(&["-key-file", &key]);
        assert!(!ok, "mode {mode:o} passed: {out}");
        assert!(
            out.contains("is writable by") && out.contains(&format!("chmod 600 {key}")),
            "{out}"
        );
    }
    chmod(&laptop, 0o660);
    let (ok, out) = check(&["-config", &conf]);
    assert!(!ok && out.contains(&format!("chmod 600 {laptop}")), "{out}");
    chmod(&laptop, 0o600);
    chmod(&key, 0o600);
    let token = write(d, "token", "metrics-token-0123\n");
    chmod(&token, 0o622);
    let (ok, out) = check(&[
        "-key-file",
        &key,
        "-metrics",
        "127.0.0.1:9586",
        "-metrics-token",
        &token,
    ]);
    assert!(!ok && out.contains(&format!("chmod 600 {token}")), "{out}");
    // The TOML keys, a relative token path beside the file: off loopback needs the token.
    chmod(&token, 0o600);
    let open = "key = \"shared-key-0123456789abcdef\"\nmetrics = \"0.0.0.0:9586\"\n";
    let m = write(d, "m.toml", open);
    chmod(&m, 0o600);
    let (ok, out) = check(&["-config", &m]);
    assert!(!ok && out.contains("give -metrics-token FILE"), "{out}");
    let m = write(d, "m.toml", &format!("{open}metrics_token = \"token\"\n"));
    let (ok, out) = check(&["-config", &m]);
    assert!(ok, "{out}");

    // Scripts run as root (the tests run as root).
    let scripts = d.join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let up = write(&scripts, "up.sh", "#!/bin/sh\nexit 0\n");
    chmod(&up, 0o755);
    let run = |up: &str| check(&["-key-file", &key, "-up", up]);
    let (ok, out) = run(&up);
    assert!(ok, "{out}");
    chmod(&up, 0o775);
    let (ok, out) = run(&up);
    assert!(!ok && out.contains(&format!("chmod go-w {up}")), "{out}");
    chmod(&up, 0o755);
    std::os::unix::fs::chown(&up, Some(4242), None).unwrap();
    let (ok, out) = run(&up);
    assert!(!ok && out.contains(&format!("chown root {up}")), "{out}");
    std::os::unix::fs::chown(&up, Some(0), None).unwrap();
    let s = path_str(&scripts).to_string();
    chmod(&s, 0o777);
    let (ok, out) = run(&up);
    assert!(
        !ok && out.contains(&format!("its directory {s} is writable by others")),
        "{out}"
    );
    assert!(out.contains(&format!("chmod go-w {s}")), "{out}");
    // A root-owned sticky directory (as /tmp, where this test's files live) is fine.
    chmod(&s, 0o1777);
    let (ok, out) = run(&up);
    assert!(ok, "{out}");
    // A link to a sound script from a directory others can write: refused too.
    chmod(&s, 0o755);
    let open = d.join("open");
    std::fs::create_dir(&open).unwrap();
    let link = open.join("up.sh");
    std::os::unix::fs::symlink(&up, &link).unwrap();
    let o = path_str(&open).to_string();
    chmod(&o, 0o777);
    let (ok, out) = run(path_str(&link));
    assert!(!ok && out.contains(&format!("chmod go-w {o}")), "{out}");
}
