//! `pgbench -N` (simple update) on a scratch database of the same server: what PostgreSQL itself
//! commits per second on this machine, the yardstick for sagas/s.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

pub struct Pgbench {
    bin: PathBuf,
    /// libpq URI of the scratch database.
    url: String,
}

impl Pgbench {
    /// The `pgbench` next to the PostgreSQL server binaries, else the one on `PATH`.
    pub fn find(url: String) -> Option<Self> {
        let beside_server = crate::embedded_pg::find_bindir()
            .ok()
            .map(|dir| dir.join("pgbench"))
            .filter(|p| p.is_file());
        let on_path = || {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("pgbench"))
                    .find(|p| p.is_file())
            })
        };
        let bin = beside_server.or_else(on_path)?;
        Some(Self { bin, url })
    }

    pub fn binary(&self) -> &std::path::Path {
        &self.bin
    }

    /// `pgbench -i -s scale` (creates and fills the pgbench tables).
    pub async fn init(&self, scale: u32) -> anyhow::Result<()> {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()])
            .await?;
        Ok(())
    }

    /// `pgbench -N -c clients -j clients -T seconds`; returns TPS without connection time.
    pub async fn simple_update_tps(&self, clients: usize, seconds: u64) -> anyhow::Result<f64> {
        let c = clients.to_string();
        let out = self
            .pgbench(&["-N", "-c", &c, "-j", &c, "-T", &seconds.to_string()])
            .await?;
        parse_tps(&out).with_context(|| format!("no `tps = …` line in pgbench output:\n{out}"))
    }

    async fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg(&self.url)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`pgbench {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            );
        }
        Ok(stdout)
    }
}

/// `tps = 1234.5 (without initial connection time)`; before PostgreSQL 14 two lines were printed:
/// take the one excluding connection time.
fn parse_tps(output: &str) -> Option<f64> {
    let tps_lines: Vec<&str> = output
        .lines()
        .filter(|l| l.trim_start().starts_with("tps = "))
        .collect();
    let line = tps_lines
        .iter()
        .find(|l| l.contains("without") || l.contains("excluding"))
        .or(tps_lines.first())?;
    line.trim_start()
        .strip_prefix("tps = ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn reads_tps_without_connection_time() {
        let v16 = "number of failed transactions: 0 (0.000%)\nlatency average = 2.1 ms\n\
                   initial connection time = 12.3 ms\ntps = 1893.402 (without initial connection time)\n";
        assert_eq!(parse_tps(v16), Some(1893.402));
        let v13 = "tps = 900.1 (including connections establishing)\n\
                   tps = 905.5 (excluding connections establishing)\n";
        assert_eq!(parse_tps(v13), Some(905.5));
        assert_eq!(parse_tps("nothing here"), None);
    }
}
