//! The system under test: `sagad serve` as a child process, so its memory is its own. It is
//! given only `serve` (and `migrate`) and environment variables, the interface every sagad build
//! shares, so that an older binary can be measured alongside a newer one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use sagad::config::Role;
use tokio::process::{Child, Command};

/// What the child needs to know; the rest of its configuration is inherited from the environment
/// (so `SAGAD_POLL_INTERVAL`, `SAGAD_LEASE`, `RUST_LOG` … apply to the benchmark too).
pub struct ChildConfig<'a> {
    /// The sagad binary under test.
    pub sagad: &'a Path,
    pub database_url: &'a str,
    pub token: &'a str,
    pub stripe_base: &'a str,
    pub notify_url: &'a str,
    pub workers: usize,
    pub pool_size: u32,
    /// `SAGAD_ROLE`: API and workers, or one of them (the scale-out phase's split processes).
    pub role: Role,
    /// Names the child's log file (`sagad-{label}.log` in `dir`).
    pub label: &'a str,
    /// `STRIPE_WEBHOOK_SECRET`: serves `POST /webhooks/stripe` (the Stripe ingestion phase).
    pub stripe_webhook_secret: Option<&'a str>,
    /// Permits `http://127.0.0.1` webhook endpoints (`SAGAD_WEBHOOK_ALLOW_HTTP`,
    /// `SAGAD_WEBHOOK_ALLOW_NETS`): the outgoing webhook phase's receiver is local.
    pub allow_local_webhooks: bool,
    /// `SAGAD_NATS_URL`: the event relay to this NATS server (the relay phase).
    pub nats_url: Option<&'a str>,
    /// Working directory: one without `sagas/`, so the built-in booking saga is used.
    pub dir: &'a Path,
}

/// `SAGAD_ROLE`'s value for `role`, as sagad parses it.
pub fn role_name(role: Role) -> String {
    role.to_possible_value()
        .map_or_else(|| format!("{role:?}"), |v| v.get_name().to_owned())
}

/// `sagad migrate` on `database_url`: the binary under test creates the schema it expects.
pub async fn migrate(sagad: &Path, database_url: &str, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(sagad)
        .arg("migrate")
        .current_dir(dir)
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot start `{} migrate`", sagad.display()))?;
    if !out.status.success() {
        bail!(
            "`{} migrate` failed ({}):\n{}",
            sagad.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

pub struct Sagad {
    child: Child,
    pid: u32,
    pub base: String,
    log: PathBuf,
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
}

impl Sagad {
    pub async fn start(config: &ChildConfig<'_>) -> anyhow::Result<Self> {
        // Bind-and-release: the child binds the port a moment later (a tiny race on a busy host).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = config.dir.join(format!("sagad-{}.log", config.label));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(config.sagad);
        command
            .arg("serve")
            .current_dir(config.dir)
            .env_remove("SAGAD_SAGAS_DIR")
            .env("DATABASE_URL", config.database_url)
            .env("SAGAD_LISTEN", &listen)
            .env("SAGAD_API_TOKENS", config.token)
            .env("STRIPE_SECRET_KEY", "sk_test_sagad_bench")
            .env("STRIPE_API_BASE", config.stripe_base)
            .env("SAGAD_NOTIFY_URL", config.notify_url)
            .env("SAGAD_NOTIFY_SECRET", "bench-notify-secret")
            .env("SAGAD_WORKERS", config.workers.to_string())
            .env("SAGAD_DB_POOL_SIZE", config.pool_size.to_string())
            .env("SAGAD_MIGRATE", "false")
            .env("SAGAD_ROLE", role_name(config.role))
            .env("SAGAD_SHUTDOWN_GRACE", "5s")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(secret) = config.stripe_webhook_secret {
            command.env("STRIPE_WEBHOOK_SECRET", secret);
        }
        if let Some(nats) = config.nats_url {
            // The relay phase's backlog is weeks old: readiness must not wait for the relay to
            // catch up with it (`SAGAD_NATS_MAX_LAG` bounds the age of the oldest unrelayed event).
            command
                .env("SAGAD_NATS_URL", nats)
                .env("SAGAD_NATS_MAX_LAG", "10000h");
        }
        if config.allow_local_webhooks {
            command
                .env("SAGAD_WEBHOOK_ALLOW_HTTP", "true")
                .env("SAGAD_WEBHOOK_ALLOW_NETS", "127.0.0.1/32");
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{} serve`", config.sagad.display()))?;
        let pid = child.id().context("the sagad child exited at once")?;
        let mut sagad = Self {
            child,
            pid,
            base: format!("http://{listen}"),
            log,
        };
        sagad.wait_ready().await?;
        Ok(sagad)
    }

    /// Polls `/readyz` (database reachable, migrations current, workers running).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`sagad serve` exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            let ready = http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "`sagad serve` was not ready within 30s; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kib = |field: &str| -> Option<f64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Memory {
            rss_mib: kib("VmRSS:")? / 1024.0,
            hwm_mib: kib("VmHWM:")? / 1024.0,
        })
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            // SAFETY: signalling our own child by the pid we were handed; no memory is involved.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "`sagad serve` stopped with {status}; its log:\n{}",
                        self.log_tail()
                    );
                }
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("`sagad serve` ignored SIGTERM for 30s and was killed");
            }
        }
        Ok(())
    }

    /// A mark at the end of what the child has logged so far.
    pub fn log_mark(&self) -> LogMark {
        LogMark {
            path: self.log.clone(),
            offset: std::fs::metadata(&self.log).map_or(0, |m| m.len()),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A position in the child's log file (which outlives the child).
pub struct LogMark {
    path: PathBuf,
    offset: u64,
}

impl LogMark {
    /// WARN and ERROR lines the child logged after the mark.
    pub fn warnings_since(&self) -> usize {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let after = bytes.get(self.offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(after)
            .lines()
            .filter(|l| is_warning(l))
            .count()
    }
}

/// A text (`… WARN target: …`, possibly with colour codes) or JSON (`"level":"WARN"`) log line at
/// WARN or ERROR.
fn is_warning(line: &str) -> bool {
    if line.trim_start().starts_with('{') {
        return line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#);
    }
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ … m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .take(3)
        .any(|w| w == "WARN" || w == "ERROR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_warning_lines() {
        assert!(is_warning(
            "2026-11-25T10:00:00.000000Z  WARN sagad::outbound::delivery: webhook lease lost"
        ));
        assert!(is_warning(
            "\u{1b}[2m2026-11-25T10:00:00Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[2msagad\u{1b}[0m: x"
        ));
        assert!(is_warning(
            "2026-11-25T10:00:00Z ERROR sagad::server: failed"
        ));
        assert!(is_warning(
            r#"{"timestamp":"…","level":"WARN","message":"x"}"#
        ));
        assert!(!is_warning(
            "2026-11-25T10:00:00Z  INFO sagad::server: WARN is only a word here"
        ));
        assert!(!is_warning(
            r#"{"level":"INFO","message":"\"level\":\"WARN\""}"#
        ));
    }
}
