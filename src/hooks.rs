//! The user's scripts (`-up`): run with a clean environment holding only the tunnel's facts,
//! a timeout, their output in our log, and a failure that says what went wrong.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::consts::HOOK_TIMEOUT;

/// What a script is told about the tunnel.
#[derive(Clone, Debug)]
pub struct TunnelEnv {
    pub tun: String,
    /// The other end's tunnel address (the server's, on a client).
    pub peer_ip: Ipv4Addr,
    pub local_ip: Ipv4Addr,
}

const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{what} script {path} not found: check -{what}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} script {path} could not be run: {source}")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} script {path} exited with {status}; its output:\n{output}")]
    Failed {
        what: &'static str,
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(
        "{what} script {path} did not finish within {0:?}; it was killed",
        HOOK_TIMEOUT
    )]
    Timeout { what: &'static str, path: PathBuf },
}

/// Runs `path` (labelled `what`, e.g. "up") with exactly TUN, PEER_IP, LOCAL_IP and PATH.
pub async fn run(what: &'static str, path: &Path, env: &TunnelEnv) -> Result<(), HookError> {
    if !path.exists() {
        return Err(HookError::Missing {
            what,
            path: path.to_path_buf(),
        });
    }
    let child = tokio::process::Command::new(path)
        .env_clear()
        .env("TUN", &env.tun)
        .env("PEER_IP", env.peer_ip.to_string())
        .env("LOCAL_IP", env.local_ip.to_string())
        .env("PATH", SAFE_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    let out = match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| HookError::Spawn {
            what,
            path: path.to_path_buf(),
            source,
        })?,
        Err(_) => {
            return Err(HookError::Timeout {
                what,
                path: path.to_path_buf(),
            });
        }
    };
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let output = output.trim_end().to_string();
    if !out.status.success() {
        return Err(HookError::Failed {
            what,
            path: path.to_path_buf(),
            status: out.status,
            output,
        });
    }
    if !output.is_empty() {
        tracing::info!("{what} script {}: {output}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn environment_is_exactly_the_tunnel_facts() {
        let dir = std::env::temp_dir().join(format!("dtun-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let ok = script(&dir, "up", &format!("env > {}", out.display()));
        let env = TunnelEnv {
            tun: "dtun7".into(),
            peer_ip: "10.86.0.1".parse().unwrap(),
            local_ip: "10.86.0.2".parse().unwrap(),
        };
        // SAFETY-free: set a variable that must not leak into the script.
        run("up", &ok, &env).await.unwrap();
        let mut lines: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .map(String::from)
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                "LOCAL_IP=10.86.0.2".to_string(),
                "PATH=".to_string() + SAFE_PATH,
                "PEER_IP=10.86.0.1".to_string(),
                "TUN=dtun7".to_string()
            ]
        );
        let bad = script(&dir, "bad", "echo broken >&2; exit 3");
        match run("up", &bad, &env).await {
            Err(HookError::Failed { output, .. }) => assert_eq!(output, "broken"),
            other => panic!("expected failure, got {other:?}"),
        }
        assert!(matches!(
            run("up", &dir.join("nope"), &env).await,
            Err(HookError::Missing { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
