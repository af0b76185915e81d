//! Orphan protection: a tiny shell process that stops the cluster once its owner is gone.
//!
//! The watchdog reads its stdin, a pipe whose only write end lives in this process
//! (std creates pipes close-on-exec, so no other child inherits it). When the owner
//! exits for any reason, SIGKILL included, or drops its [`Watchdog`], the kernel closes
//! the write end, `read` returns, and the watchdog shuts the postmaster down (only if
//! `postmaster.pid` still names the postmaster it was started for, so it never stops a
//! cluster a later owner restarted) and removes an ephemeral data directory.
//!
//! It runs in its own process group, so Ctrl-C in a terminal reaches the owner but not
//! the watchdog, and its stdout/stderr are /dev/null, so it never holds a pipe that a
//! parent such as `cargo test` is waiting on.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, Command};

use super::Error;

const SCRIPT: &str = r#"
pm=$1 dir=$2 signal=$3 remove_dir=$4 sock_dir=$5
while read -r _; do :; done
if kill -0 "$pm" 2>/dev/null && [ "$(head -n 1 "$dir/postmaster.pid" 2>/dev/null)" = "$pm" ]; then
  kill "-$signal" "$pm"
  while kill -0 "$pm" 2>/dev/null; do sleep 0.1; done
fi
if [ "$remove_dir" = 1 ]; then rm -rf "$dir"; fi
if [ -n "$sock_dir" ]; then rm -rf "$sock_dir"; fi
"#;

/// A running watchdog; dropping it (or the process dying) triggers the shutdown.
pub(super) struct Watchdog {
    child: Child,
    /// Held only so that it closes when we go away.
    _lifeline: ChildStdin,
}

pub(super) struct Orders<'a> {
    pub postmaster_pid: u32,
    pub data_dir: &'a Path,
    pub ephemeral: bool,
    pub socket_dir: Option<&'a PathBuf>,
}

impl Watchdog {
    pub(super) fn spawn(orders: Orders<'_>) -> Result<Self, Error> {
        // Immediate shutdown is fine for a throwaway cluster; keep durable data tidy.
        let signal = if orders.ephemeral { "QUIT" } else { "INT" };
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("sagad-pg-watchdog")
            .arg(orders.postmaster_pid.to_string())
            .arg(orders.data_dir)
            .arg(signal)
            .arg(if orders.ephemeral { "1" } else { "0" })
            .arg(orders.socket_dir.map(|d| d.as_os_str()).unwrap_or_default())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            command: "sh -c <watchdog script>".to_owned(),
            source,
        })?;
        let lifeline = child.stdin.take().ok_or_else(|| Error::Spawn {
            command: "sh -c <watchdog script>".to_owned(),
            source: std::io::Error::other("watchdog stdin was not piped"),
        })?;
        tracing::debug!(pid = child.id(), "started embedded PostgreSQL watchdog");
        Ok(Self {
            child,
            _lifeline: lifeline,
        })
    }

    /// Stops the watchdog without letting it act: the owner shuts the cluster down itself.
    pub(super) async fn dismiss(mut self) {
        if let Err(error) = self.child.kill().await {
            tracing::warn!(%error, "could not stop the embedded PostgreSQL watchdog");
        }
    }
}
