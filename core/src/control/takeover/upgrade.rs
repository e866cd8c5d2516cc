//! The upgrade trigger for a service manager: on SIGUSR2 the running
//! process starts the binary it was started from (a package upgrade has
//! replaced the file by then) with its own arguments. The new process is
//! its child, so it runs in the same service (cgroup, user, environment),
//! and takes over through the takeover socket like any `stickgate run`;
//! the old one names it the service's main process (`MAINPID=`) before it
//! hands over, so `Type=notify` units follow the upgrade with
//! `NotifyAccess=main`.

use std::process::Command;

/// Start a successor on every SIGUSR2 until the process ends; each one is
/// waited for on a thread of its own, so a successor that fails to start
/// is logged (this process keeps serving) and never left a zombie.
pub fn on_sigusr2() -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGUSR2: binary upgrades need a manual `stickgate run`");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            spawn_successor();
        }
    }))
}

/// The same command line again, from the same path (not /proc/self/exe,
/// which still names the replaced file).
fn spawn_successor() {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        tracing::warn!("SIGUSR2: no program path to start the new binary from");
        return;
    };
    // The successor is not yet the process systemd expects watchdog pings
    // from; without WATCHDOG_PID it pings once it is the main process.
    let spawned = Command::new(&program)
        .args(args)
        .env_remove("WATCHDOG_PID")
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(program = %program.to_string_lossy(), error = %e, "SIGUSR2: cannot start the new binary; this process keeps serving");
            return;
        }
    };
    let pid = child.id();
    tracing::info!(pid, program = %program.to_string_lossy(), "SIGUSR2: started the new binary; it takes over through the takeover socket");
    std::thread::spawn(move || match child.wait() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            tracing::warn!(pid, status = %s, "the new binary exited; this process keeps serving")
        }
        Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the new binary"),
    });
}
