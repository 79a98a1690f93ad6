//! The resolv.conf method, on files of the tests' own.

use super::*;

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
        fs::read_dir(self.backups()).map(|d| d.count()).unwrap_or(0)
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
    // Another push replaces the servers; the backup still holds the original.
    dns.pushed(&[ip("198.51.100.53")]);
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
    std::mem::forget(dns); // as kill -9: no restore
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
