//! What a client routes: `-route all|CIDR,…`, `-exclude CIDR,…|@FILE` (or an exclude file,
//! one CIDR per line, `#` comments), `-allow-ipv6-leak` and `-kill-switch`, parsed and checked
//! before anything touches the kernel.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::IpNet;

/// What the client routes through the tunnel, from `-route`, `-exclude`, `-allow-ipv6-leak`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// `-route all`: 0.0.0.0/1 and 128.0.0.0/1.
    pub all: bool,
    /// `-route CIDR,…`.
    pub routes: Vec<IpNet>,
    /// `-exclude`: kept on the old path.
    pub exclude: Vec<IpNet>,
    /// With `-route all`: do not block IPv6.
    pub allow_ipv6_leak: bool,
    /// `-kill-switch`: block what the tunnel carries whenever it is down, also after a crash.
    pub kill_switch: bool,
}

impl RouteSpec {
    /// Builds and checks the spec from the flags' values (`-exclude` may be given many times).
    pub fn from_flags(
        route: Option<&str>,
        exclude: &[String],
        allow_ipv6_leak: bool,
        kill_switch: bool,
    ) -> Result<RouteSpec, String> {
        let mut spec = RouteSpec {
            allow_ipv6_leak,
            kill_switch,
            ..RouteSpec::default()
        };
        if let Some(route) = route {
            if route.trim() == "all" {
                spec.all = true;
            } else {
                spec.routes = parse_list(route).map_err(|e| {
                    format!("bad -route: {e} (give `all` or CIDRs separated by commas)")
                })?;
            }
        }
        for ex in exclude {
            let nets = match ex.strip_prefix('@') {
                Some(path) => read_exclude_file(Path::new(path))?,
                None => parse_list(ex).map_err(|e| format!("bad -exclude: {e}"))?,
            };
            spec.exclude.extend(nets);
        }
        spec.exclude.sort();
        spec.exclude.dedup();
        if !spec.exclude.is_empty() && !spec.is_active() {
            return Err(
                "-exclude needs -route (all or CIDRs): without it nothing goes through the tunnel to exclude from".into(),
            );
        }
        if allow_ipv6_leak && !spec.all {
            return Err("-allow-ipv6-leak only means something with -route all".into());
        }
        if kill_switch && !spec.is_active() {
            return Err(
                "-kill-switch needs -route (all or CIDRs): it blocks what the tunnel carries while the tunnel is down".into(),
            );
        }
        Ok(spec)
    }

    /// Whether dtun manages routes at all.
    pub fn is_active(&self) -> bool {
        self.all || !self.routes.is_empty()
    }

    /// Whether IPv6 is blocked (`-route all` without `-allow-ipv6-leak`).
    pub fn blocks_ipv6(&self) -> bool {
        self.all && !self.allow_ipv6_leak
    }

    /// What goes into the tunnel.
    pub fn tunnel_routes(&self) -> Vec<IpNet> {
        if self.all {
            vec![
                IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 1).expect("valid /1"),
                IpNet::new(Ipv4Addr::new(128, 0, 0, 0).into(), 1).expect("valid /1"),
            ]
        } else {
            self.routes.clone()
        }
    }
}

pub use dtun_proto::cidr::{parse as parse_cidr, parse_list};

/// An exclude file: one CIDR a line, `#` starts a comment, blank lines are skipped. A bad
/// line's error names the file and the line.
pub fn read_exclude_file(path: &Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read -exclude file {}: {e}", path.display()))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        nets.push(parse_cidr(line).map_err(|e| {
            format!(
                "{}:{}: {e}; fix or remove that line of the -exclude file",
                path.display(),
                i + 1
            )
        })?);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr(" 1.2.3.4 ").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let e = parse_cidr("10.1.2.3/8").unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert!(parse_list("10.0.0.0/8,,1.2.3.0/24").is_err());
    }

    #[test]
    fn specs() {
        let s = RouteSpec::from_flags(
            Some("all"),
            &["10.0.0.0/8,192.168.0.0/16".into()],
            false,
            false,
        )
        .unwrap();
        assert!(s.all && s.blocks_ipv6() && s.exclude.len() == 2);
        assert_eq!(s.tunnel_routes().len(), 2);
        let s = RouteSpec::from_flags(Some("all"), &[], true, false).unwrap();
        assert!(!s.blocks_ipv6());
        let s = RouteSpec::from_flags(Some("10.1.0.0/16,10.2.0.0/16"), &[], false, true).unwrap();
        assert!(!s.all && s.routes.len() == 2 && !s.blocks_ipv6());
        assert!(RouteSpec::from_flags(None, &["10.0.0.0/8".into()], false, false).is_err());
        assert!(RouteSpec::from_flags(Some("10.0.0.0/8"), &[], true, false).is_err());
        let e = RouteSpec::from_flags(None, &[], false, true).unwrap_err();
        assert!(e.starts_with("-kill-switch needs -route"), "{e}");
        let e = RouteSpec::from_flags(Some("10.0.0.0/80"), &[], false, false).unwrap_err();
        assert!(e.starts_with("bad -route"), "{e}");
        assert!(!RouteSpec::default().is_active());
    }

    #[test]
    fn exclude_file_errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("dtun-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("list");
        std::fs::write(&f, "# comment\n10.0.0.0/8  # ten\n\n1.2.3.0/24\n").unwrap();
        let nets = read_exclude_file(&f).unwrap();
        assert_eq!(nets.len(), 2);
        std::fs::write(&f, "10.0.0.0/8\nnonsense\n").unwrap();
        let e = read_exclude_file(&f).unwrap_err();
        assert!(e.contains(&format!("{}:2:", f.display())), "{e}");
        assert!(read_exclude_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
