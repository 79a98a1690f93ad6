//! systemd's readiness protocol (`Type=notify`, sd_notify(3)) through the `sd-notify` crate.
//!
//! Every call is a no-op unless `NOTIFY_SOCKET` is set (systemd sets it for a `Type=notify`
//! unit; the tests bind one of their own). A send that fails is logged at debug level and
//! otherwise ignored: the service manager's bookkeeping never stops the tunnel. The variable
//! never reaches `-up`/`-down` scripts, whose environment is cleared (src/hooks.rs).

use sd_notify::NotifyState;

/// `READY=1`: the server listens / the client's tunnel is up. Sent again after a reconnect,
/// which systemd ignores once the unit is active.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time systemd asks for; follow it with [`ready`] once the
/// new configuration is in force.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: shutdown has begun (close_notify, down scripts, devices removed).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// `STATUS=...`: one line `systemctl status` shows.
pub fn status(msg: &str) {
    send(&[NotifyState::Status(msg)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}
