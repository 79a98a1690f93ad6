//! The manager against a reload, driven by hand in a network namespace of the test's own
//! (`unshare(CLONE_NEWNET)` on the test's thread, as tests/netlink.rs does): the events a
//! demultiplexer would queue are handed to it in a chosen order, so a race is replayed
//! exactly, every run.

use super::*;
use crate::ops::reload::{Applied, Reconfigure};
use dtun_proto::handshake::Completed;
use dtun_proto::keys::KeyStore;
use dtun_proto::record;
use nix::sched::{CloneFlags, unshare};

const OLD_KEY: &[u8] = b"old-key-0123456789";
const NEW_KEY: &[u8] = b"new-key-0123456789";

/// Runs `test` on a current-thread runtime in a thread with its own network namespace (gone
/// with the thread, TUNs and all).
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn store(key: &[u8]) -> KeyStore {
    KeyStore {
        shared: Some(key.to_vec().into()),
        ..Default::default()
    }
}

/// A manager of a server with `-key OLD_KEY`, as `run_with` makes it, and the demultiplexer's
/// end of its command channel.
async fn manager() -> (Manager, mpsc::UnboundedReceiver<DemuxCmd>) {
    let nl = Netlink::new().unwrap();
    nl.set_link_up(1, 65536).await.unwrap();
    let cli = crate::cli::Cli::try_from_args([
        "dtun",
        "-key",
        "old-key-0123456789",
        "-pool",
        "10.77.0.0/24",
        "-pool6",
        "off",
    ])
    .unwrap();
    let cfg = ServerConfig::from_cli(&cli).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp = Udp::new(Arc::new(sock)).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let keys = Arc::new(std::sync::RwLock::new(cfg.keys.clone()));
    let m = Manager {
        pool: Pool::new(cfg.pool).unwrap(),
        pool6: None,
        cfg,
        nl,
        udp,
        cmd_tx,
        devices: HashMap::new(),
        next_session: 0,
        refusals: Default::default(),
        scripts: Vec::new(),
        fatal: None,
        counters: Arc::new(super::super::DemuxCounters::new(Arc::default())),
        removed: crate::ops::status::Traffic::zero(),
        status_rx: None,
        keys,
        stale_addr: Default::default(),
        firewall: None,
        lan_table: Default::default(),
        host_view: Default::default(),
        rekey_budget: dtun_linux::rate_limit::RateLimit::new(super::REKEY_INITS_PER_SECOND),
    };
    (m, cmd_rx)
}

/// A handshake of `id` completed by the demultiplexer under `key`.
fn completed(id: &str, key: &[u8]) -> Box<Completed> {
    Box::new(Completed {
        suite: record::Suite::Aes128Gcm,
        keys: dtun_proto::kdf::KeyBlock {
            client_key: [1; 16],
            server_key: [2; 16],
            client_iv: [3; 4],
            server_iv: [4; 4],
        },
        identity: id.as_bytes().to_vec(),
        final_flight: vec![0; 8],
        key_id: dtun_proto::keys::KeyId::of(key),
        epoch1: dtun_proto::rekey::EpochSecret::from_bytes(1, [5; 32]),
    })
}

async fn reload(m: &mut Manager, keys: KeyStore) -> Applied {
    let (done, applied) = tokio::sync::oneshot::channel();
    let r = Reconfigure {
        keys,
        linger: m.cfg.linger,
        max_clients: m.cfg.max_clients,
        dns: Vec::new(),
        done,
    };
    m.reconfigure(r).await;
    applied.await.unwrap().unwrap()
}

fn installs(rx: &mut mpsc::UnboundedReceiver<DemuxCmd>) -> usize {
    let mut n = 0;
    while let Ok(cmd) = rx.try_recv() {
        n += usize::from(matches!(cmd, DemuxCmd::Install { .. }));
    }
    n
}

/// The race of a revoked key, replayed: the demultiplexer verified a
/// handshake under the old key and queued it; the manager takes the reload that changed the
/// key first, then the queued completion. It must not become a session. A completion under the
/// new key still does.
#[test]
fn a_completion_under_a_key_a_reload_replaced_gets_no_session() {
    dtun_testgate::need_root!();
    in_netns(|| async {
        let (mut m, mut rx) = manager().await;
        let peer = "127.0.0.1:9".parse().unwrap();
        let queued = completed("racer", OLD_KEY);
        reload(&mut m, store(NEW_KEY)).await;
        m.event(Event::Authenticated {
            addr: peer,
            est: queued,
        })
        .await;
        assert!(
            m.devices.is_empty(),
            "a handshake completed under the replaced key got a device"
        );
        assert_eq!(installs(&mut rx), 0, "and a session in the demultiplexer");
        // The same id with the key in force now gets in.
        m.event(Event::Authenticated {
            addr: peer,
            est: completed("racer", NEW_KEY),
        })
        .await;
        assert!(m.devices.get("racer").is_some_and(|d| d.session.is_some()));
        assert_eq!(installs(&mut rx), 1);
        m.end_session("racer", None, "test over").await;
        m.remove_device("racer").await;
    });
}

/// A session that started under a key, and a reload that removes the id's key: the session
/// ends at the reload, and a completion of the same id queued under the old key is refused.
#[test]
fn a_removed_key_ends_the_session_and_refuses_queued_completions() {
    dtun_testgate::need_root!();
    in_netns(|| async {
        let (mut m, mut rx) = manager().await;
        let peer = "127.0.0.1:9".parse().unwrap();
        m.event(Event::Authenticated {
            addr: peer,
            est: completed("racer", OLD_KEY),
        })
        .await;
        assert_eq!(installs(&mut rx), 1);
        let queued = completed("racer", OLD_KEY);
        // Only listed ids now, "racer" not among them.
        let mut keys = store(OLD_KEY);
        keys.clients.insert(
            "other".into(),
            dtun_proto::keys::parse_credentials("other key=other-key-0123456789")
                .unwrap()
                .remove("other")
                .unwrap(),
        );
        let applied = reload(&mut m, keys).await;
        assert_eq!(applied.ended, ["racer"]);
        m.event(Event::Authenticated {
            addr: peer,
            est: queued,
        })
        .await;
        assert!(m.devices.is_empty(), "a removed id got a device back");
        assert_eq!(installs(&mut rx), 0);
    });
}
