//! The user's scripts (`-up`, `-down`): run in a process group of their own with a clean
//! environment holding only the tunnel's facts, a timeout that kills the whole group, their
//! output in our log, and a failure that says what went wrong. We wait for the script, not for
//! whatever it left running.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long the client's up script may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a script is told about the tunnel.
#[derive(Clone, Debug)]
pub struct TunnelEnv {
    pub tun: String,
    /// The other end's tunnel address (the server's, on a client).
    pub peer_ip: Ipv4Addr,
    pub local_ip: Ipv4Addr,
    /// The tunnel's IPv6 pair (local, peer) when it carries IPv6: LOCAL_IP6 and PEER_IP6,
    /// absent from the environment otherwise.
    pub ip6: Option<(Ipv6Addr, Ipv6Addr)>,
}

const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{what} script {path} not found: check -{what}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} script {path} could not be run: {error}")]
    Spawn {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} script {path} exited with {status}; its output:\n{output}")]
    Failed {
        what: &'static str,
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{what} script {path} did not finish within {timeout:?}; it was killed")]
    Timeout {
        what: &'static str,
        path: PathBuf,
        timeout: Duration,
    },
}

/// Runs `path` (labelled `what`, e.g. "up") with exactly TUN, PEER_IP, LOCAL_IP and PATH
/// (and LOCAL_IP6, PEER_IP6 when the tunnel carries IPv6).
pub async fn run(what: &'static str, path: &Path, env: &TunnelEnv) -> Result<(), HookError> {
    run_with_timeout(what, path, env, HOOK_TIMEOUT).await
}

/// [`run`] with its own deadline instead of [`HOOK_TIMEOUT`].
pub async fn run_with_timeout(
    what: &'static str,
    path: &Path,
    env: &TunnelEnv,
    timeout: Duration,
) -> Result<(), HookError> {
    if !path.exists() {
        return Err(HookError::Missing {
            what,
            path: path.to_path_buf(),
        });
    }
    let spawn_err = |error| HookError::Spawn {
        what,
        path: path.to_path_buf(),
        error,
    };
    // Its own process group, so a timeout can end the script and everything it started.
    let mut command = tokio::process::Command::new(path);
    command
        .env_clear()
        .env("TUN", &env.tun)
        .env("PEER_IP", env.peer_ip.to_string())
        .env("LOCAL_IP", env.local_ip.to_string())
        .env("PATH", SAFE_PATH);
    if let Some((local, peer)) = env.ip6 {
        command
            .env("LOCAL_IP6", local.to_string())
            .env("PEER_IP6", peer.to_string());
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    // Until the script has exited, dropping this (a timeout, or our caller giving up) kills
    // its whole group; the script's pid, hence the group id, cannot be reused before we reap it.
    let mut group = GroupGuard(child.id());
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r.map_err(spawn_err)?,
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            return Err(HookError::Timeout {
                what,
                path: path.to_path_buf(),
                timeout,
            });
        }
    };
    // It exited: what it started in the background is the user's (a daemon, say) and stays.
    group.0 = None;
    // Its output is complete unless a background process still holds the pipes: then take
    // what came so far and stop waiting.
    let (stdout, stderr) = tokio::join!(stdout.finish(), stderr.finish());
    let out = Output {
        stdout,
        stderr,
        status,
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

/// How long to wait for a script's pipes to close once it has exited.
const PIPE_GRACE: Duration = Duration::from_millis(100);
/// Output kept per pipe; the rest is read and dropped.
const MAX_OUTPUT: usize = 64 * 1024;

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: std::process::ExitStatus,
}

/// Kills the process group it names when dropped.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = crate::sys::kill_process_group(pgid, libc::SIGKILL);
        }
    }
}

/// One of a script's output pipes, read to its end by a task of its own, which keeps reading
/// (and dropping) after we stopped waiting, so a background process that writes to it never
/// blocks on a full pipe nor gets SIGPIPE.
struct Capture {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Capture {
    fn start(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> Capture {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let buf = std::sync::Arc::clone(&buf);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    let room = MAX_OUTPUT.saturating_sub(b.len()).min(n);
                    b.extend_from_slice(&chunk[..room]);
                }
            })
        });
        Capture { buf, task }
    }

    /// What was read by the end of the pipe, or by [`PIPE_GRACE`] from now.
    async fn finish(mut self) -> Vec<u8> {
        if let Some(task) = self.task.as_mut() {
            let _ = tokio::time::timeout(PIPE_GRACE, task).await;
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()))
    }
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
            ip6: None,
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
        // With IPv6 inside, LOCAL_IP6 and PEER_IP6 join them.
        let env6 = TunnelEnv {
            ip6: Some((
                "fd64:7475:6e00::2".parse().unwrap(),
                "fd64:7475:6e00::1".parse().unwrap(),
            )),
            ..env.clone()
        };
        run("up", &ok, &env6).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("\nLOCAL_IP6=fd64:7475:6e00::2\n")
                || text.starts_with("LOCAL_IP6=fd64:7475:6e00::2\n"),
            "{text}"
        );
        assert!(text.contains("PEER_IP6=fd64:7475:6e00::1\n"), "{text}");
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

    fn test_env() -> TunnelEnv {
        TunnelEnv {
            tun: "dtun7".into(),
            peer_ip: "10.86.0.1".parse().unwrap(),
            local_ip: "10.86.0.2".parse().unwrap(),
            ip6: None,
        }
    }

    /// Whether `pid` is gone (or a zombie waiting for its reaper).
    fn dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// Live processes whose process group is `pgid`.
    fn group_members(pgid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid) {
                out.push(pid);
            }
        }
        out
    }

    fn read_pid(p: &Path) -> u32 {
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }

    /// A script that leaves a background process behind (holding our pipes) is done when it
    /// exits: we neither wait for the background process nor kill it.
    #[tokio::test]
    async fn background_child_does_not_hold_us() {
        let dir = std::env::temp_dir().join(format!("dtun-hooks-bg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bg = dir.join("bg.pid");
        let up = script(
            &dir,
            "up",
            &format!("sleep 30 &\necho $! > {}\necho started", bg.display()),
        );
        let t0 = std::time::Instant::now();
        let r = run_with_timeout("up", &up, &test_env(), Duration::from_secs(10)).await;
        let took = t0.elapsed();
        eprintln!("run returned after {took:?}");
        let bg = read_pid(&bg);
        let alive = !dead(bg);
        // The test's own cleanup: the background sleep is ours to stop.
        let _ = std::process::Command::new("kill")
            .arg(bg.to_string())
            .status();
        std::fs::remove_dir_all(dir).unwrap();
        r.unwrap();
        assert!(
            took < Duration::from_secs(2),
            "run took {took:?} for a script that exits at once"
        );
        assert!(alive, "the script's background process was killed");
    }

    /// On timeout the script's whole process group goes, its background children included.
    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("dtun-hooks-to-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (me, bg) = (dir.join("me.pid"), dir.join("bg.pid"));
        let up = script(
            &dir,
            "up",
            &format!(
                "echo $$ > {}\nsleep 30 &\necho $! > {}\nsleep 30",
                me.display(),
                bg.display()
            ),
        );
        let t0 = std::time::Instant::now();
        let r = run_with_timeout("up", &up, &test_env(), Duration::from_millis(700)).await;
        let took = t0.elapsed();
        eprintln!("timed out after {took:?}");
        let (me, bg) = (read_pid(&me), read_pid(&bg));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !(dead(me) && dead(bg) && group_members(me).is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (me_dead, bg_dead, left) = (dead(me), dead(bg), group_members(me));
        let _ = std::process::Command::new("kill")
            .arg(bg.to_string())
            .status();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(
            matches!(r, Err(HookError::Timeout { .. })),
            "expected a timeout, got {r:?}"
        );
        assert!(took < Duration::from_secs(3), "timeout took {took:?}");
        assert!(me_dead, "the script itself survived its timeout");
        assert!(
            bg_dead,
            "the script's background child survived its timeout"
        );
        assert!(left.is_empty(), "group {me} still has {left:?}");
    }
}
