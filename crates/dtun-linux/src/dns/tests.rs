//! The resolv.conf method, on files of the tests' own.

use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("dtun-dns-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    fn backups(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn dns(&self, own: &[&str], accept: bool) -> Dns {
        let own = own.iter().map(|s| s.parse().unwrap()).collect();
        Dns::with_paths(&self.resolv(), &self.backups(), own, accept)
    }
    fn backup_count(&self) -> usize {
        fs::read_dir(self.backups())
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".bak"))
                })
                .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const ORIGINAL: &[u8] = b"# site\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pushed_dns_applies_in_place_and_restores_byte_for_byte() {
    let f = Files::new("apply");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let ino = fs::metadata(f.resolv()).unwrap().ino();
    let dns = f.dns(&[], true);
    dns.tunnel_up("dtun0", 7);
    assert_eq!(
        fs::read(f.resolv()).unwrap(),
        ORIGINAL,
        "nothing before a push"
    );
    dns.pushed(&[ip("203.0.113.10"), ip("2001:db8::53")]);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(now.starts_with(MARKER), "{now}");
    assert!(now.contains("nameserver 203.0.113.10\nnameserver 2001:db8::53\n"));
    assert!(
        now.contains("options edns0") && !now.contains("192.0.2.1"),
        "{now}"
    );
    assert_eq!(fs::metadata(f.resolv()).unwrap().ino(), ino, "in place");
    assert_eq!(f.backup_count(), 1);
    // Another push (a second later) replaces the servers; the backup still holds the original.
    dns.pushed_at(&[ip("198.51.100.53")], Instant::now() + MIN_SET_INTERVAL);
    assert!(
        fs::read_to_string(f.resolv())
            .unwrap()
            .contains("198.51.100.53")
    );
    dns.restore();
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
    assert_eq!(f.backup_count(), 0);
}

/// A dtun server pushes its DNS before its Hello answer, so before the client's first tunnel
/// is up: nothing changes until it is, then the servers apply with the TUN's name and index
/// known (with resolved, a push applied at once went to ifindex 0).
#[test]
fn a_push_before_the_first_tunnel_waits_for_it() {
    let f = Files::new("early");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&[], true);
    dns.pushed(&[ip("203.0.113.10")]);
    assert_eq!(
        fs::read(f.resolv()).unwrap(),
        ORIGINAL,
        "applied before the tunnel"
    );
    assert_eq!(f.backup_count(), 0);
    dns.tunnel_up("dtun0", 7);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(now.starts_with(MARKER) && now.contains("dtun0"), "{now}");
    assert!(now.contains("nameserver 203.0.113.10\n"), "{now}");
    dns.restore();
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
    // A push that never saw its tunnel is forgotten with the tunnel.
    let dns = f.dns(&[], true);
    dns.pushed(&[ip("203.0.113.10")]);
    dns.restore();
    dns.tunnel_up("dtun0", 7);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
}

#[test]
fn pushed_dns_is_ignored_without_accept_and_own_dns_wins() {
    let f = Files::new("ignore");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&[], false);
    dns.tunnel_up("dtun0", 7);
    dns.pushed(&[ip("203.0.113.10")]);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
    drop(dns);
    let dns = f.dns(&["192.0.2.99"], true);
    dns.tunnel_up("dtun0", 7);
    dns.pushed(&[ip("203.0.113.10")]);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(
        now.contains("192.0.2.99") && !now.contains("203.0.113.10"),
        "{now}"
    );
    drop(dns);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL, "restored on drop");
}

/// A dtun killed with its DNS in place: the next one restores the original at start.
#[test]
fn a_crash_is_repaired_on_the_next_start() {
    let f = Files::new("crash");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    dns.crash(); // as kill -9: no restore, the lock goes with the process
    assert!(fs::read_to_string(f.resolv()).unwrap().starts_with(MARKER));
    let _dns = f.dns(&[], false);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
    assert_eq!(f.backup_count(), 0);
}

/// Someone else rewrote the file while the tunnel was up: theirs stays.
#[test]
fn a_file_rewritten_by_others_is_left_alone() {
    let f = Files::new("others");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    fs::write(f.resolv(), b"nameserver 192.0.2.7\n").unwrap();
    dns.restore();
    assert_eq!(fs::read(f.resolv()).unwrap(), b"nameserver 192.0.2.7\n");
    assert_eq!(f.backup_count(), 0);
}

/// A backup that cannot be written leaves the file untouched.
#[test]
fn nothing_changes_when_the_backup_cannot_be_saved() {
    let f = Files::new("nobackup");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    fs::write(f.backups(), b"a file where the directory should be").unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
}

/// The review's finding 6: a symlink planted at the backup's temporary name in the runtime
/// directory must not make root write through it (before the fix `save` created
/// `resolv.conf.DEV-INO.tmp` with `File::create`, following the link).
#[test]
fn a_symlink_in_the_runtime_directory_is_not_followed() {
    let f = Files::new("plant");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    fs::create_dir_all(f.backups()).unwrap();
    let victim = f.dir.join("victim");
    fs::write(&victim, b"precious").unwrap();
    let m = fs::metadata(f.resolv()).unwrap();
    let stem = format!("resolv.conf.{}-{}", m.dev(), m.ino());
    for name in [format!("{stem}.tmp"), format!("{stem}.bak.tmp")] {
        std::os::unix::fs::symlink(&victim, f.backups().join(name)).unwrap();
    }
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious",
        "written through a link"
    );
    drop(dns);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
}

/// A planted backup (a symlink to another file) is not taken for a crash's left-over: the
/// resolv.conf is not "restored" from it.
#[test]
fn a_planted_backup_is_not_believed() {
    let f = Files::new("plantbak");
    fs::create_dir_all(f.backups()).unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    drop(dns);
    fs::write(
        f.resolv(),
        format!("{MARKER}left by a crash\nnameserver 192.0.2.99\n"),
    )
    .unwrap();
    let secret = f.dir.join("secret");
    fs::write(&secret, b"nameserver 198.51.100.66\n").unwrap();
    let m = fs::metadata(f.resolv()).unwrap();
    let bak = f
        .backups()
        .join(format!("resolv.conf.{}-{}.bak", m.dev(), m.ino()));
    std::os::unix::fs::symlink(&secret, &bak).unwrap();
    let _dns = f.dns(&[], false);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(
        !now.contains("198.51.100.66"),
        "restored from a planted link: {now}"
    );
}

/// resolv.conf reached through a directory anyone may write to: what is there now may be
/// anyone's link (here to a file root owns), so dtun must not write through it. A symlink
/// from resolv.conf into a directory of root's (as to systemd-resolved's stub) stays fine.
#[test]
fn resolv_conf_through_a_directory_others_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Files::new("opendir");
    let open = f.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let victim = f.dir.join("victim");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, open.join("resolv.conf")).unwrap();
    std::os::unix::fs::symlink(open.join("resolv.conf"), f.resolv()).unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious",
        "written through a planted link"
    );
    drop(dns);
    // A link into a directory of root's is followed (the file is rewritten in place).
    let safe = f.dir.join("safe");
    fs::create_dir(&safe).unwrap();
    fs::write(safe.join("resolv.conf"), ORIGINAL).unwrap();
    fs::remove_file(f.resolv()).unwrap();
    std::os::unix::fs::symlink(safe.join("resolv.conf"), f.resolv()).unwrap();
    let dns = f.dns(&["192.0.2.99"], false);
    dns.tunnel_up("dtun0", 7);
    let now = fs::read_to_string(safe.join("resolv.conf")).unwrap();
    assert!(
        now.starts_with(MARKER) && now.contains("192.0.2.99"),
        "{now}"
    );
    drop(dns);
    assert_eq!(fs::read(safe.join("resolv.conf")).unwrap(), ORIGINAL);
}

/// The review's finding 7: a second client that starts while the first has its DNS in place
/// must not "recover" the first one's backup (before the fix it restored the original under
/// the live first client), nor write its own over it.
#[test]
fn a_second_client_does_not_undo_a_live_ones_dns() {
    let f = Files::new("two");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let first = f.dns(&["192.0.2.99"], false);
    first.tunnel_up("dtun0", 7);
    let second = f.dns(&["198.51.100.2"], false);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(
        now.contains("192.0.2.99"),
        "the first's DNS was undone at start: {now}"
    );
    second.tunnel_up("dtun1", 8);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(
        now.contains("192.0.2.99") && !now.contains("198.51.100.2"),
        "the second wrote over the first's: {now}"
    );
    drop(second);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(
        now.contains("192.0.2.99"),
        "the second's exit undid the first's: {now}"
    );
    drop(first);
    assert_eq!(fs::read(f.resolv()).unwrap(), ORIGINAL);
}

/// The review's finding 13: pushed servers no resolver should use are refused; the rest apply.
#[test]
fn unusable_pushed_servers_are_refused() {
    let f = Files::new("badpush");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&[], true);
    dns.tunnel_up("dtun0", 7);
    let bad = [
        "0.0.0.0",
        "255.255.255.255",
        "127.0.0.1",
        "224.0.0.251",
        "169.254.1.1",
        "::",
        "::1",
        "ff02::fb",
        "fe80::1",
        "::ffff:127.0.0.1",
    ];
    let mut pushed: Vec<IpAddr> = bad.iter().map(|s| ip(s)).collect();
    dns.pushed(&pushed);
    assert_eq!(
        fs::read(f.resolv()).unwrap(),
        ORIGINAL,
        "nothing usable, nothing set"
    );
    pushed.push(ip("203.0.113.10"));
    dns.pushed(&pushed);
    let now = fs::read_to_string(f.resolv()).unwrap();
    let servers: Vec<&str> = now
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(servers, ["nameserver 203.0.113.10"], "{now}");
}

/// A server pushing list after list: the servers change at most once per MIN_SET_INTERVAL,
/// and the last list wins once the interval has passed (before the throttle every push was a
/// rewrite and an fsync: 1000 pushes, 1000 rewrites, 0.43 s on the test machine).
#[test]
fn many_pushes_cost_one_rewrite_a_second() {
    let f = Files::new("throttle");
    fs::write(f.resolv(), ORIGINAL).unwrap();
    let dns = f.dns(&[], true);
    dns.tunnel_up("dtun0", 7);
    let t0 = Instant::now();
    let list = |i: u32| [IpAddr::from(std::net::Ipv4Addr::from(0xcb00_7100 + i))];
    let mut rewrites = 0;
    let mut last = fs::read(f.resolv()).unwrap();
    for i in 0..1000u32 {
        // 1000 pushes over 2.5 simulated seconds.
        dns.pushed_at(&list(i), t0 + Duration::from_micros(2500 * u64::from(i)));
        let now = fs::read(f.resolv()).unwrap();
        if now != last {
            rewrites += 1;
            last = now;
        }
    }
    assert_eq!(dns.lock().sets, 3, "one change at 0 s, 1 s and 2 s");
    assert_eq!(rewrites, 3);
    assert!(!String::from_utf8_lossy(&last).contains("203.0.115.231"));
    // The last list is applied once the interval has passed.
    dns.lock().tick(t0 + Duration::from_millis(2600));
    assert_eq!(dns.lock().sets, 3, "not before a second has passed");
    dns.lock().tick(t0 + Duration::from_millis(3100));
    assert_eq!(dns.lock().sets, 4);
    let now = fs::read_to_string(f.resolv()).unwrap();
    assert!(now.contains("nameserver 203.0.116.231\n"), "{now}");
    // The same list again is no change.
    dns.pushed_at(&list(999), t0 + Duration::from_secs(10));
    assert_eq!(dns.lock().sets, 4);
}

/// The walk to resolv.conf follows root's links, relative ones and `..` included (as
/// /etc/resolv.conf → ../run/resolvconf/resolv.conf), and names what it refuses.
#[test]
fn the_walk_follows_roots_relative_links_and_names_a_planted_one() {
    dtun_testgate::need_root!();
    let f = Files::new("walk");
    let run = f.dir.join("run2/resolvconf");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("resolv.conf"), ORIGINAL).unwrap();
    fs::create_dir(f.dir.join("etc")).unwrap();
    let link = f.dir.join("etc/resolv.conf");
    std::os::unix::fs::symlink("../run2/./resolvconf/resolv.conf", &link).unwrap();
    assert_eq!(
        file::trusted_target(&link).unwrap(),
        run.join("resolv.conf")
    );
    // A link that belongs to another user is refused, named.
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let e = file::trusted_target(&link).unwrap_err();
    assert!(e.contains("belongs to uid 65534"), "{e}");
}
