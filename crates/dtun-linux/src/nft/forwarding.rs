//! IPv4 forwarding for dtun's table (`crate::nft`): the value from before any dtun of the
//! network namespace, kept in the RunDir state file `NETNS.ip_forward` (written before anything
//! changes, so a sibling dtun and the next start after a `kill -9` know it), and the decisions
//! about it, which the dtuns of a namespace take one at a time (the RunDir lock `forwarding`).

use std::io;
use std::path::{Path, PathBuf};

use super::NftError;
use crate::rundir::{Lock, RunDir};

/// The RunDir state file (per network namespace) with IPv4 forwarding from before any dtun.
const FORWARD_STATE: &str = "ip_forward";
/// The RunDir lock every dtun of a namespace takes while it decides about forwarding.
const FORWARD_LOCK: &str = "forwarding";
/// How long to wait for another dtun's forwarding decision.
const FORWARD_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What forwarding was before any dtun, and what it is now.
pub(super) struct Decided {
    pub before: u8,
    pub now: u8,
}

/// Waits for this dtun's turn to decide about forwarding.
pub(super) fn turn(dir: &RunDir, who: &str) -> Result<Lock, NftError> {
    dir.lock_wait(FORWARD_LOCK, who, FORWARD_LOCK_WAIT)
        .map_err(|e| NftError::Lock(e.to_string()))
}

pub(super) fn read(path: &Path) -> io::Result<u8> {
    let s = std::fs::read_to_string(path)?;
    Ok(if s.trim() == "0" { 0 } else { 1 })
}

pub(super) fn write(path: &Path, v: u8) -> io::Result<()> {
    std::fs::write(path, if v == 0 { "0\n" } else { "1\n" })
}

/// The state file of the forwarding value from before any dtun.
fn state(dir: &RunDir) -> PathBuf {
    dir.path(FORWARD_STATE)
}

/// The recorded forwarding value, if its story fits what is there now: dtun only ever turns
/// forwarding on, so "was on" while it is off now is a left-over of another life of this
/// namespace's inode number, not ours.
fn recorded(dir: &RunDir, now: u8) -> Option<u8> {
    let text = dir.read_state(&state(dir)).ok().flatten()?;
    let v = match std::str::from_utf8(&text).ok()?.trim() {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    (v == 0 || now == 1).then_some(v)
}

/// The value from before any dtun (with `others` other dtun tables in the namespace), recorded
/// when this dtun will turn forwarding on (`needs`). With no other dtun table left, a recorded
/// value that differs from now is what a dtun that died (`kill -9`: its table went with it, its
/// forwarding could not) left behind: it is put back first.
pub(super) fn decide(
    dir: &RunDir,
    path: &Path,
    others: usize,
    needs: bool,
) -> Result<Decided, NftError> {
    let mut now = read(path).map_err(NftError::Forwarding)?;
    let before = match recorded(dir, now) {
        Some(v) if others == 0 && v != now => {
            write(path, v).map_err(NftError::Forwarding)?;
            tracing::info!(
                "IPv4 forwarding back to {v}, as it was before a dtun that did not exit cleanly"
            );
            now = v;
            v
        }
        Some(v) => v,
        None => now,
    };
    let file = state(dir);
    if needs {
        // Before anything changes, so a kill -9 from here on still knows it.
        dir.write_state(&file, format!("{before}\n").as_bytes())
            .map_err(|e| NftError::State(file.display().to_string(), e))?;
    } else if others == 0 {
        let _ = dir.remove_state(&file);
    }
    Ok(Decided { before, now })
}

/// Puts forwarding back to `before` (the last dtun table of the namespace is gone) and removes
/// the record.
pub(super) fn restore(dir: &RunDir, path: &Path, before: u8) {
    if read(path).ok() != Some(before) {
        match write(path, before) {
            Ok(()) => tracing::info!("IPv4 forwarding back to {before}"),
            Err(e) => tracing::warn!("cannot restore {}: {e}", path.display()),
        }
    }
    let file = state(dir);
    if let Err(e) = dir.remove_state(&file) {
        tracing::warn!("cannot remove {}: {e}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_left_by_a_killed_dtun_is_put_back_by_the_next() {
        let base = std::env::temp_dir().join(format!("dtun-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = RunDir::at(&base).unwrap();
        let sw = base.join("ip_forward");
        write(&sw, 0).unwrap();
        // The first dtun records 0 and turns forwarding on, then dies.
        let d = decide(&dir, &sw, 0, true).unwrap();
        assert_eq!((d.before, d.now), (0, 0));
        write(&sw, 1).unwrap();
        // A sibling that starts meanwhile knows the value from before.
        assert_eq!(decide(&dir, &sw, 1, true).unwrap().before, 0);
        assert_eq!(read(&sw).unwrap(), 1);
        // With no other dtun table, the next start puts it back.
        let d = decide(&dir, &sw, 0, false).unwrap();
        assert_eq!((d.before, d.now, read(&sw).unwrap()), (0, 0, 0));
        assert!(dir.read_state(&state(&dir)).unwrap().is_none());
        // "Was on" while it is off now is not ours: not believed.
        dir.write_state(&state(&dir), b"1\n").unwrap();
        assert_eq!(decide(&dir, &sw, 0, true).unwrap().before, 0);
        restore(&dir, &sw, 0);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
