//! Named constants in one place: first what the wire protocol fixes, then what dtun chose.

use std::time::Duration;

// ---- Fixed by DTLS 1.2 and the original dtun protocol (docs/PROTOCOL.md) ----

/// DTLS 1.2 record version on the wire.
pub const DTLS12_VERSION: [u8; 2] = [0xfe, 0xfd];
/// Record header: type(1) version(2) epoch(2) sequence(6) length(2).
pub const RECORD_HEADER_LEN: usize = 13;
/// Explicit per-record nonce carried by AES-CCM and AES-GCM suites.
pub const EXPLICIT_NONCE_LEN: usize = 8;
/// Where a record's plaintext starts inside a record buffer.
pub const PAYLOAD_OFFSET: usize = RECORD_HEADER_LEN + EXPLICIT_NONCE_LEN;
/// TLS content types.
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// RFC 9146 `tls12_cid`: the outer content type of a record that carries a connection ID (its
/// real type is encrypted inside it). Only ever between dtun peers, only with AES-128-GCM.
pub const CONTENT_TLS12_CID: u8 = 25;
/// Alert description close_notify, sent at level warning (1).
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
pub const ALERT_LEVEL_WARNING: u8 = 1;
/// Largest TLS plaintext fragment (RFC 5246 §6.2.1): larger records are dropped as oversized.
pub const MAX_RECORD_PLAINTEXT: usize = 1 << 14;
/// The original reads records into 1500-byte buffers: never send it more plaintext than this.
pub const MAX_COMPAT_PLAINTEXT: usize = 1500;
/// The address message: client tunnel IPv4 ‖ server tunnel IPv4.
pub const ADDRESS_MESSAGE_LEN: usize = 8;
/// The peernet message when the client announces no LAN.
pub const PEERNET_EMPTY: &str = "empty";
/// Largest DTLS sequence number (48 bits).
pub const MAX_SEQUENCE: u64 = (1 << 48) - 1;
/// Defaults of the original's flags.
pub const DEFAULT_PORT: u16 = 443;
pub const DEFAULT_ID: &str = "dtun";

// ---- Chosen by dtun ----

/// Length of a connection ID (RFC 9146 lets a receiver pick 0 to 255 bytes; ours are 8).
pub const CID_LEN: usize = 8;
/// Header of a connection ID record: type(1) version(2) epoch(2) sequence(6) cid(8) length(2).
pub const CID_RECORD_HEADER_LEN: usize = RECORD_HEADER_LEN + CID_LEN;
/// Where a CID record's plaintext starts inside a record buffer (after the explicit nonce).
pub const CID_PAYLOAD_OFFSET: usize = CID_RECORD_HEADER_LEN + EXPLICIT_NONCE_LEN;

/// First sequence number our record layer sends in epoch 1. The handshake sends its Finished
/// (and any retransmission of it) in epoch 1 from 0 upwards with the same keys; starting far
/// above keeps the two from ever sharing a sequence number, hence a nonce, and keeps a peer's
/// replay window from rejecting our first records.
pub const FIRST_APP_SEQUENCE: u64 = 1 << 32;
/// Sequence numbers kept in reserve at the end of an epoch: once no more than this many are
/// left, a sender stops sending packets and closes the session (Close reason 4, exhausted,
/// then close_notify), so the client reconnects with fresh keys before the space runs out.
pub const EXHAUSTION_MARGIN: u64 = 1 << 16;
/// The server's default address pool.
pub const DEFAULT_POOL: &str = "10.86.0.0/16";
/// Default `-max-clients`: devices (lingering ones included) beyond which ids not listed in
/// the credentials file are refused.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
/// Default TUN name pattern; the kernel replaces %d.
pub const DEFAULT_TUN_NAME: &str = "dtun%d";
/// How long the server keeps an id's device after its session ended.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(120);
/// The client abandons a handshake that has not completed by then. It resends its flight
/// every second without backoff ([`FLIGHT_INTERVAL`]) and a handshake takes 3 round trips, so 20 s leaves
/// room on very lossy links. (The server keeps a proven handshake's state for at most
/// `server::admission::HANDSHAKE_STATE_TIMEOUT`; a client that is still trying then starts
/// over with a fresh ClientHello.)
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each side waits for the other's setup record (address / peernet message).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server waits for a new device's client to say Hello (a dtun client says it
/// right after its peernet message) before running the device's up script without the IPv6
/// pair, which only a dtun peer gets.
pub const HELLO_GRACE: Duration = Duration::from_secs(2);
/// ICMP port unreachables for one handshake attempt, with nothing yet from the server, after
/// which the client gives that attempt up and backs off: an operator with a wrong -host or
/// -port hears so within seconds, not after HANDSHAKE_TIMEOUT. Only the attempt is lost (a
/// spoofer would have to guess each attempt's new port); a session is never ended this way.
pub const HANDSHAKE_REFUSALS: u32 = 3;
/// How long a client waits for a sign of life after an ICMP port unreachable when it cannot
/// ping (keepalive 0, or a server without control messages). ICMP errors are unauthenticated:
/// one is a hint that the server is gone, never proof.
pub const REFUSED_GRACE: Duration = Duration::from_secs(10);
/// Keepalive periods missed before a peer counts as dead.
pub const KEEPALIVE_MISSES: u32 = 3;
/// Client reconnect backoff: first delay, cap, and the delay after being replaced by another
/// holder of the id (so two clients with one id do not flap).
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
pub const REPLACED_BACKOFF: Duration = Duration::from_secs(60);
/// A client with several `-host` servers tries the next one this soon after a failed try (the
/// backoff grows once per round of them all).
pub const FAILOVER_DELAY: Duration = Duration::from_millis(200);
/// Interval at which the client's handshake resends its last flight while it waits for the
/// server's (fixed, no backoff: what the `dtls` crate, the client's handshake before, did).
pub const FLIGHT_INTERVAL: Duration = Duration::from_secs(1);
/// Session events (peernet, alerts, control messages) queued from the demultiplexer to the
/// server's manager; past this they are counted drops (`events_dropped`), so a peer's flood
/// never grows memory nor blocks the data path.
pub const EVENT_QUEUE: usize = 256;
/// Size of every packet buffer: a whole UDP datagram or a TUN packet fits.
pub const BUF_LEN: usize = 65536;
/// Outer overhead: IPv4 + UDP, IPv6 + UDP.
pub const UDP4_OVERHEAD: usize = 28;
pub const UDP6_OVERHEAD: usize = 48;
/// The path MTU we assume for the default tunnel MTU.
pub const PATH_MTU: usize = 1500;

/// Least time between two resends of the server's last handshake flight to one client, and
/// between two resends of the client's flight that a repeated server flight asks for.
pub const FINAL_FLIGHT_RESEND: Duration = Duration::from_millis(250);

/// How a client tells a bare close_notify (all an original server says when it stops or drops
/// a session; a dtun server says why first, in a Close).
pub const CLOSE_NOTIFY_WORDS: &str = "close_notify (it shut down or dropped this session)";

/// First byte of every control record. An IP packet starts with 0x4_ or 0x6_, so a control
/// record can never be mistaken for one (and is never sent to a peer that did not negotiate).
pub const CONTROL_MARKER: u8 = 0x00;
