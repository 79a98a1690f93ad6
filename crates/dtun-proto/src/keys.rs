//! Key material: `genkey`, per-id key derivation from one server secret, the server's
//! credentials file, and the PSK lookup that puts them together. Keys are always the exact
//! bytes of their text (PROTOCOL.md "Decisions"), so derived and generated keys, being hex
//! text, also work with an original peer.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::IpNet;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Keys shorter than this get a warning.
pub const MIN_KEY_LEN: usize = 16;

/// Longest PSK identity (client id) accepted; the client's `-id` has the same limit.
pub const MAX_ID_LEN: usize = 128;

/// A PSK identity as an id, if it is one: 1 to [`MAX_ID_LEN`] bytes of UTF-8 without control
/// characters. Everything else is refused before any lookup, so two byte strings never become
/// one id (as `from_utf8_lossy` would make them), and an id is safe to log as it is (no
/// newline to forge a log line with). Every lookup of a key by identity goes through this.
pub fn valid_identity(id: &[u8]) -> Option<&str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return None;
    }
    let s = std::str::from_utf8(id).ok()?;
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(s)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read credentials file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{file} line {line}: {why}")]
    Syntax {
        file: String,
        line: usize,
        why: String,
    },
    #[error("no randomness available from the system")]
    Random,
}

/// A random 256-bit key as 64 lowercase hex characters.
pub fn genkey() -> Result<String, KeyError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Random)?;
    Ok(hex::encode(b))
}

/// The key of `id` under a master secret: hex(HMAC-SHA256(master, id)).
pub fn derive(master: &[u8], id: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, master), id);
    hex::encode(tag.as_ref())
}

/// An isolation group's name: 1 to 32 ASCII letters, digits, `-` or `_`.
pub fn valid_group(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One client of the credentials file. Its Debug output leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// Wiped when dropped.
    pub key: Zeroizing<Vec<u8>>,
    /// Fixed tunnel address of the client (the pool pair that holds it).
    pub addr: Option<Ipv4Addr>,
    /// Fixed IPv6 tunnel address of the client (`addr6=`, the `-pool6` pair that holds it).
    pub addr6: Option<std::net::Ipv6Addr>,
    /// The only LANs this id may announce (None: the default rules).
    pub lans: Option<Vec<IpNet>>,
    /// Isolation group: with groups in use, client-to-client traffic passes only between ids
    /// of the same group (None: the ungrouped ids, which form a group of their own).
    pub group: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("key", &format_args!("<redacted>"))
            .field("addr", &self.addr)
            .field("addr6", &self.addr6)
            .field("lans", &self.lans)
            .field("group", &self.group)
            .finish()
    }
}

/// `id key=KEY [addr=A.B.C.D] [addr6=IPV6] [lans=CIDR,CIDR]` per line. A line whose first non-blank
/// character is `#` is a comment; there are no trailing comments, so a `#` inside a word (a key
/// such as `key=ab#cd`) is kept, and a word that starts with `#` after other words is refused
/// as ambiguous rather than silently cutting the line.
pub fn parse_credentials(text: &str) -> Result<HashMap<String, Client>, KeyError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why: String| KeyError::Syntax {
            file: "credentials file".into(),
            line: i + 1,
            why,
        };
        if let Some(w) = line.split_whitespace().find(|w| w.starts_with('#')) {
            return Err(err(format!(
                "{w:?} looks like a trailing comment, which this file does not have: put comments on their own line (first non-blank character `#`); a `#` inside a value, as in key=ab#cd, is part of it"
            )));
        }
        let mut words = line.split_whitespace();
        let id = words.next().unwrap_or_default().to_string();
        let mut client = Client {
            key: Zeroizing::new(Vec::new()),
            addr: None,
            addr6: None,
            lans: None,
            group: None,
        };
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| err(format!("{w:?} is not key=value")))?;
            match k {
                "key" => client.key = Zeroizing::new(v.as_bytes().to_vec()),
                "addr" => {
                    client.addr = Some(
                        v.parse()
                            .map_err(|_| err(format!("addr {v:?} is not an IPv4 address")))?,
                    )
                }
                "addr6" => {
                    client.addr6 = Some(
                        v.parse()
                            .map_err(|_| err(format!("addr6 {v:?} is not an IPv6 address")))?,
                    )
                }
                "lans" => {
                    let lans = v
                        .split(',')
                        .map(crate::cidr::parse_lan)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| err(format!("lans: {e}; give CIDRs separated by commas")))?;
                    client.lans = Some(lans);
                }
                "group" => {
                    if !valid_group(v) {
                        return Err(err(format!(
                            "group {v:?} must be 1 to 32 letters, digits, '-' or '_'"
                        )));
                    }
                    client.group = Some(v.to_string());
                }
                _ => {
                    return Err(err(format!(
                        "unknown field {k:?} (key, addr, addr6, lans, group)"
                    )));
                }
            }
        }
        if client.key.is_empty() {
            return Err(err(format!("id {id:?} has no key=")));
        }
        if out.insert(id.clone(), client).is_some() {
            return Err(err(format!("id {id:?} appears twice")));
        }
    }
    Ok(out)
}

/// Reads a credentials file (its mode: `ops::perms`).
pub fn load_credentials(path: &Path) -> Result<HashMap<String, Client>, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
    let creds = parse_credentials(&text).map_err(|e| match e {
        KeyError::Syntax { line, why, .. } => KeyError::Syntax {
            file: path.display().to_string(),
            line,
            why,
        },
        e => e,
    })?;
    for (id, c) in &creds {
        warn_if_short(&c.key, &format!("the key of {id} in {}", path.display()));
    }
    Ok(creds)
}

/// Which key a handshake was completed with: SHA-256 of the key's bytes. A reload may change
/// or remove an id's key while a completed handshake waits for the manager; the manager
/// starts a session only when this is still the id's key ([`KeyStore::key_id_for`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 32]);

impl KeyId {
    pub fn of(key: &[u8]) -> KeyId {
        let mut b = [0u8; 32];
        b.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
        KeyId(b)
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyId(..)")
    }
}

/// Where the server finds a client's key. Its Debug output leaves the keys out; they are
/// wiped when dropped.
#[derive(Clone, Default)]
pub struct KeyStore {
    /// `-key`: for every id when there is no credentials file, else only with `-allow-unlisted`.
    pub shared: Option<Zeroizing<Vec<u8>>>,
    /// `-master-key-file`: derive per-id keys.
    pub master: Option<Zeroizing<Vec<u8>>>,
    pub clients: HashMap<String, Client>,
    pub allow_unlisted: bool,
    /// Ids turned off (`disabled = true` in their `[clients.ID]`): refused whatever key they
    /// bring, listed, derived or shared, as if they had none.
    pub disabled: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |k: &Option<Zeroizing<Vec<u8>>>| k.as_ref().map(|_| "<redacted>");
        f.debug_struct("KeyStore")
            .field("shared", &redacted(&self.shared))
            .field("master", &redacted(&self.master))
            .field("clients", &self.clients)
            .field("allow_unlisted", &self.allow_unlisted)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl KeyStore {
    /// The isolation group of `id` (None: ungrouped, also for ids not in the credentials file).
    pub fn group_of(&self, id: &str) -> Option<&str> {
        self.clients.get(id).and_then(|c| c.group.as_deref())
    }

    /// The key for a PSK identity, or None to refuse it. An invalid identity
    /// ([`valid_identity`]) is refused exactly as an unknown one is.
    pub fn key_for(&self, id: &[u8]) -> Option<Vec<u8>> {
        let id = valid_identity(id)?;
        if self.disabled.contains(id) {
            return None;
        }
        if let Some(c) = self.clients.get(id) {
            return Some(c.key.to_vec());
        }
        if let Some(m) = &self.master {
            return Some(derive(m, id.as_bytes()).into_bytes());
        }
        if self.clients.is_empty() || self.allow_unlisted {
            return self.shared.as_ref().map(|k| k.to_vec());
        }
        None
    }

    /// Which key `id` has now (None: it has none, so it is refused).
    pub fn key_id_for(&self, id: &[u8]) -> Option<KeyId> {
        self.key_for(id).map(|k| KeyId::of(&Zeroizing::new(k)))
    }
}

/// Warns about a key too short to resist guessing.
pub fn warn_if_short(key: &[u8], what: &str) {
    if let Some(w) = short_key(key, what) {
        tracing::warn!("{w}");
    }
}

/// The warning about a key too short to resist guessing, if it is (for callers that log it
/// later, once logging is set up).
pub fn short_key(key: &[u8], what: &str) -> Option<String> {
    (key.len() < MIN_KEY_LEN).then(|| {
        format!(
            "{what} is only {} byte{}: use at least {MIN_KEY_LEN} (`dtun genkey` makes a strong one)",
            key.len(),
            if key.len() == 1 { "" } else { "s" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genkey_is_64_hex() {
        let k = genkey().unwrap();
        assert_eq!(k.len(), 64);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(k, genkey().unwrap());
    }

    #[test]
    fn derive_is_hmac_sha256_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            derive(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Only whole lines are comments: a `#` inside a key is part of the key, and a `#` that
    /// starts a word after other fields (a trailing comment?) is refused, naming the line.
    #[test]
    fn hash_in_keys_is_kept_and_trailing_comments_refused() {
        let c =
            parse_credentials("# all\n   # indented\nx key=ab#cd addr=10.86.0.10\ny key=#start\n")
                .unwrap();
        assert_eq!(&c["x"].key[..], b"ab#cd");
        assert_eq!(c["x"].addr, Some(Ipv4Addr::new(10, 86, 0, 10)));
        assert_eq!(&c["y"].key[..], b"#start");
        assert_eq!(c.len(), 2);
        for (text, line) in [
            ("x key=abc #note\n", 1),
            ("# ok\nx key=abc\t#note\n", 2),
            ("x key=abc # note\n", 1),
            ("x #key=abc\n", 1),
        ] {
            match parse_credentials(text) {
                Err(e @ KeyError::Syntax { line: l, .. }) => {
                    assert_eq!(l, line, "{text:?}");
                    let msg = e.to_string();
                    assert!(msg.contains("own line"), "{text:?}: {msg}");
                }
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
        let dir = std::env::temp_dir().join(format!("dtun-keys-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("clients");
        std::fs::write(&f, "a key=0123456789abcdef\nb key=0123456789abcdef #x\n").unwrap();
        let msg = load_credentials(&f).unwrap_err().to_string();
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("line 2"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn groups_are_parsed_and_checked() {
        let c = parse_credentials("a key=k group=red\nb key=k\n").unwrap();
        assert_eq!(c["a"].group.as_deref(), Some("red"));
        assert_eq!(c["b"].group, None);
        for bad in [
            "a key=k group=",
            "a key=k group=r/d",
            &format!("a key=k group={}", "g".repeat(33)),
        ] {
            let msg = parse_credentials(bad).unwrap_err().to_string();
            assert!(msg.contains("group"), "{bad}: {msg}");
        }
    }

    /// Invalid identities (not UTF-8, control characters, empty, over 128 bytes) get no key,
    /// whatever the store holds: they behave as unknown ids.
    #[test]
    fn invalid_identities_get_no_key() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        let max = "a".repeat(MAX_ID_LEN);
        let invalid: [&[u8]; 7] = [
            b"caf\xc3",
            b"caf\xff",
            b"a\nINFO forged",
            b"tab\there",
            b"del\x7f",
            b"",
            long.as_bytes(),
        ];
        let stores = [
            KeyStore {
                shared: Some(b"shared-key-0123456789".to_vec().into()),
                ..Default::default()
            },
            KeyStore {
                master: Some(b"master-secret-0123456789".to_vec().into()),
                ..Default::default()
            },
        ];
        for ks in &stores {
            for id in invalid {
                assert_eq!(ks.key_for(id), None, "{:?}", id.escape_ascii().to_string());
                assert!(valid_identity(id).is_none());
            }
            assert!(ks.key_for(max.as_bytes()).is_some());
            assert!(ks.key_for("laptop é".as_bytes()).is_some());
        }
        // Two distinct byte strings that from_utf8_lossy would both turn into "caf\u{fffd}".
        assert_eq!(
            String::from_utf8_lossy(b"caf\xc3"),
            String::from_utf8_lossy(b"caf\xff")
        );
        assert_eq!(
            valid_identity("caf\u{fffd}".as_bytes()),
            Some("caf\u{fffd}")
        );
    }

    #[test]
    fn credentials_and_lookup() {
        let text = "# clients\nlaptop key=abc addr=10.86.0.10 addr6=fd64:7475:6e00::a lans=10.200.0.0/24,10.201.0.1/24\n# no LAN:\nphone key=xyz\n";
        let c = parse_credentials(text).unwrap();
        assert_eq!(c["laptop"].addr, Some(Ipv4Addr::new(10, 86, 0, 10)));
        assert_eq!(
            c["laptop"].lans.as_ref().unwrap()[1].to_string(),
            "10.201.0.0/24"
        );
        assert_eq!(
            c["laptop"].addr6,
            Some("fd64:7475:6e00::a".parse().unwrap())
        );
        assert_eq!(c["phone"].addr6, None);
        assert_eq!(c["phone"].key[..], b"xyz"[..]);
        for bad in [
            "x",
            "x key",
            "x key=a key2=b",
            "x key=a addr=1",
            "x key=a addr6=10.86.0.2",
            "x key=a addr6=fd00::/64",
            "x key=a lans=1.2.3.4",
            "x key=a\nx key=b",
        ] {
            assert!(parse_credentials(bad).is_err(), "{bad}");
        }
        let mut ks = KeyStore {
            shared: Some(b"shared".to_vec().into()),
            clients: c,
            ..Default::default()
        };
        assert_eq!(ks.key_for(b"laptop").unwrap(), b"abc");
        assert_eq!(ks.key_for(b"stranger"), None);
        ks.allow_unlisted = true;
        assert_eq!(ks.key_for(b"stranger").unwrap(), b"shared");
        ks.master = Some(b"m".to_vec().into());
        assert_eq!(
            ks.key_for(b"stranger").unwrap(),
            derive(b"m", b"stranger").into_bytes()
        );
        assert_eq!(ks.key_for(b"phone").unwrap(), b"xyz");
        // A disabled id has no key at all: not its own, not a derived or shared one.
        ks.disabled.insert("phone".into());
        ks.disabled.insert("stranger".into());
        assert_eq!(ks.key_for(b"phone"), None);
        assert_eq!(ks.key_for(b"stranger"), None);
        let only_shared = KeyStore {
            shared: Some(b"s".to_vec().into()),
            ..Default::default()
        };
        assert_eq!(only_shared.key_for(b"any").unwrap(), b"s");
    }
}
