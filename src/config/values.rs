//! How the config file's values are read: each is checked while it is deserialized, so a bad
//! one is an error at its own line (toml gives the span); and how such an error is told.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::cli::SecretArg;

/// A secret: its bytes go straight into a [`SecretArg`] (wiped when dropped).
pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretArg>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(D::Error::custom("the key is empty"));
    }
    Ok(Some(SecretArg::from(s)))
}

/// `"30s"`, `"5m"`, `"250ms"` or a number of seconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Dur {
        Secs(u64),
        Text(String),
    }
    match Dur::deserialize(d)
        .map_err(|_: D::Error| D::Error::custom("expected a duration such as \"30s\" or \"5m\""))?
    {
        Dur::Secs(n) => Ok(Some(Duration::from_secs(n))),
        Dur::Text(s) => crate::cli::parse_duration(&s)
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// One of a clap value enum's names (`cipher = "gcm"`, `client_to_client = "on"`).
pub(super) fn choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: clap::ValueEnum,
{
    let s = String::deserialize(d)?;
    T::from_str(&s, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| format!("{:?}", p.get_name())))
            .collect();
        D::Error::custom(format!("{s:?} is not one of {}", names.join(", ")))
    })
}

/// `mtu`: 576 to 1500, as the flag.
pub(super) fn mtu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = i64::deserialize(d)?;
    match u16::try_from(n) {
        Ok(m) if (576..=1500).contains(&m) => Ok(Some(m)),
        _ => Err(D::Error::custom(format!(
            "{n} is not an MTU from 576 to 1500"
        ))),
    }
}

/// `peernet`: a CIDR or `empty`.
pub(super) fn peernet<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Nets {
        One(String),
        Many(Vec<String>),
    }
    let s = match Nets::deserialize(d).map_err(|_: D::Error| {
        D::Error::custom("expected \"empty\" or CIDRs (a string or an array of strings)")
    })? {
        Nets::One(s) => s,
        Nets::Many(v) => v.join(","),
    };
    crate::config::split_peernet(&s).map_err(D::Error::custom)?;
    Ok(Some(s))
}

/// `pool6`: an IPv6 prefix or `"off"`.
pub(super) fn pool6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    dtun_proto::pool6::parse_pool6(&s).map_err(D::Error::custom)?;
    Ok(Some(s))
}

/// `route`: `"all"`, or CIDRs as one comma-separated string or as an array.
pub(super) fn route<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Route {
        One(String),
        Many(Vec<String>),
    }
    let r = Route::deserialize(d).map_err(|_: D::Error| {
        D::Error::custom("expected \"all\" or CIDRs (a string or an array of strings)")
    })?;
    let text = match r {
        Route::One(s) => s,
        Route::Many(v) => v.join(","),
    };
    if text.trim() != "all" {
        dtun_linux::routes::parse_list(&text)
            .map_err(|e| D::Error::custom(format!("{e} (give \"all\" or CIDRs)")))?;
    }
    Ok(Some(text))
}

/// `exclude`: CIDRs, or `@FILE` entries (a file of CIDRs, read when the role's config is built).
pub(super) fn exclude<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for e in &v {
        if !e.starts_with('@') {
            dtun_linux::routes::parse_list(e).map_err(D::Error::custom)?;
        }
    }
    Ok(Some(v))
}

/// A client's `lans`: an array of CIDRs (host bits cleared, as in the credentials file).
pub(super) fn lans<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    one_or_many(d)?
        .iter()
        .map(|s| dtun_proto::cidr::parse_lan(s).map_err(D::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `accept_pool`: CIDRs (one or an array), as `-accept-pool` takes them (host bits refused).
pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    one_or_many(d)?
        .iter()
        .map(|s| dtun_proto::cidr::parse(s).map_err(D::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `pool`: an IPv4 prefix, as `-pool` takes it.
pub(super) fn pool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ipnet::Ipv4Net>, D::Error> {
    let s = String::deserialize(d)?;
    crate::cli::parse_pool(&s)
        .map(Some)
        .map_err(D::Error::custom)
}

/// A list of IP addresses (`dns`): an array, or one string (`dns = "10.0.0.1"`, or several
/// separated by commas, as the flag takes them).
pub(super) fn addresses<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<std::net::IpAddr>>, D::Error> {
    let mut out = Vec::new();
    for s in one_or_many(d)? {
        for part in s.split(',') {
            let ip = part.trim().parse().map_err(|_| {
                D::Error::custom(format!("{part:?} is not an IP address such as 10.0.0.1"))
            })?;
            out.push(ip);
        }
    }
    Ok(Some(out))
}

/// `host`: one server (`"vpn.example.com"`, `"[2001:db8::1]:443"`) or several, as a string
/// separated by commas or an array, tried in order; checked as `-host` is.
pub(super) fn hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let joined = one_or_many(d)?.join(",");
    crate::config::hosts::parse_hosts(&joined, dtun_proto::consts::DEFAULT_PORT)
        .map_err(|e| D::Error::custom(e.replacen("-host ", "", 1)))?;
    Ok(Some(joined))
}

/// A string, or an array of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    match List::deserialize(d)
        .map_err(|_: D::Error| D::Error::custom("expected a string or an array of strings"))?
    {
        List::One(s) => Ok(vec![s]),
        List::Many(v) => Ok(v),
    }
}

/// A client's `group`.
pub(super) fn group<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !dtun_proto::keys::valid_group(&s) {
        return Err(D::Error::custom(format!(
            "group {s:?} must be 1 to 32 letters, digits, '-' or '_'"
        )));
    }
    Ok(Some(s))
}

/// `instance`: a valid instance name.
pub(super) fn instance<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    dtun_linux::nft::check_instance(&s).map_err(D::Error::custom)?;
    Ok(Some(s))
}

/// The 1-based line of byte offset `at` in `text`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The key a toml error's span points at: the key itself (an unknown key), or the key whose
/// value it is, with the table it is in (`clients.laptop.addr`).
fn key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    let start = span.start.min(text.len());
    let spanned = text
        .get(span.clone())
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    let upto = &text[..start];
    // Lines up to and including the one the span starts on, last first.
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let current = &text[line_start..line_end];
    let mut key = None;
    let mut table = None;
    let before = std::iter::once(current).chain(text[..line_start].lines().rev());
    for line in before {
        let l = line.trim();
        if l.starts_with('[') {
            table = Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            break;
        }
        if key.is_none()
            && let Some((k, _)) = l.split_once('=')
            && bare(k.trim().trim_matches('"'))
        {
            key = Some(k.trim().trim_matches('"').to_string());
        }
    }
    // An unknown key's span is the key itself.
    if bare(spanned) && current.trim_start().starts_with(spanned) {
        key = Some(spanned.to_string());
    }
    if current.trim_start().starts_with('[') {
        return table;
    }
    let key = key?;
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key,
    })
}

/// `FILE line N: key K: what is wrong`, from a toml error.
pub(super) fn describe(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let msg = unknown_key(&msg).unwrap_or(msg);
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            match key_at(text, span) {
                Some(key) if msg.starts_with("unknown key") => {
                    let hint = msg.split_once(": ").map_or("", |(_, h)| h);
                    format!("{} line {line}: unknown key {key}: {hint}", path.display())
                }
                Some(key) => format!("{} line {line}: key {key}: {msg}", path.display()),
                None => format!("{} line {line}: {msg}", path.display()),
            }
        }
        None => format!("{}: {msg}", path.display()),
    }
}

/// serde's "unknown field `natt`, expected one of `host`, …" as "unknown key `natt`: did you
/// mean `nat`?" (or where the keys are listed, when none is close).
fn unknown_key(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let best = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Some(match best {
        Some((_, k)) => format!("unknown key `{name}`: did you mean `{k}`?"),
        None => format!(
            "unknown key `{name}`: every flag is a key, `-` written `_` (see `dtun --help` or `man dtun`)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_from_spans() {
        let t = "port = 1\n\n[clients.laptop]\naddr = \"x\"\nbogus = 1\n";
        let at = |needle: &str| {
            let i = t.find(needle).unwrap();
            key_at(t, i..i + needle.len())
        };
        assert_eq!(at("1\n").as_deref(), Some("port"));
        assert_eq!(at("\"x\"").as_deref(), Some("clients.laptop.addr"));
        assert_eq!(at("bogus").as_deref(), Some("clients.laptop.bogus"));
        assert_eq!(at("laptop").as_deref(), Some("clients.laptop"));
        assert_eq!(line_of(t, t.find("bogus").unwrap()), 5);
    }

    #[test]
    fn a_misspelt_key_gets_a_suggestion() {
        let msg = "unknown field `natt`, expected one of `host`, `nat`, `client_to_client`";
        assert_eq!(
            unknown_key(msg).unwrap(),
            "unknown key `natt`: did you mean `nat`?"
        );
        let msg = "unknown field `qqq`, expected one of `host`, `nat`";
        assert!(unknown_key(msg).unwrap().contains("see `dtun --help`"));
        assert_eq!(unknown_key("invalid type"), None);
    }
}
