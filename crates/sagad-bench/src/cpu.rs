//! CPU time spent during a measured window, machine-wide and by the processes the bench knows:
//! the figure to compare when the host's speed drifts (throughput on a shared VM moves by tens of
//! per cent between identical runs; the CPU a saga costs moves much less).

use std::time::Instant;

use serde::Serialize;

/// Clock ticks a second of `/proc` accounting (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy ticks of the whole machine: user, nice, system, irq and softirq time of every CPU
/// (`/proc/stat`), leaving out idle, iowait and time stolen by the hypervisor.
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    Some(fields.first()? + fields.get(1)? + fields.get(2)? + fields.get(5)? + fields.get(6)?)
}

/// The fields of `/proc/PID/stat` (or of this process) after the command name, which may hold
/// spaces: field N of proc(5) is at index N - 3.
fn stat_fields(pid: Option<u32>) -> Option<Vec<String>> {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn field(f: &[String], n: usize) -> Option<u64> {
    f.get(n - 3)?.parse().ok()
}

/// User + system ticks of process `pid` (all its threads), or of this process.
fn process(pid: Option<u32>) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime, stime: fields 14 and 15.
    Some(field(&f, 14)? + field(&f, 15)?)
}

/// User + system ticks of several processes (the `sagad serve` children of a scale-out run).
pub fn processes(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| process(Some(*p))).sum()
}

/// A local PostgreSQL server's processes: the postmaster and its children (backends, WAL writer,
/// checkpointer, autovacuum …), found from the pid of one of its backends.
#[derive(Debug, Clone, Copy)]
pub struct Postgres {
    postmaster: u32,
}

impl Postgres {
    /// `backend` is what `pg_backend_pid()` answered. `None` when that process is not a local
    /// PostgreSQL backend (a server on another host).
    pub fn of_backend(backend: u32) -> Option<Self> {
        let comm = std::fs::read_to_string(format!("/proc/{backend}/comm")).ok()?;
        if !comm.starts_with("postgres") {
            return None;
        }
        // ppid: field 4.
        let postmaster = u32::try_from(field(&stat_fields(Some(backend))?, 4)?).ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{postmaster}/comm")).ok()?;
        comm.starts_with("postgres").then_some(Self { postmaster })
    }

    /// Ticks spent by the server so far: the postmaster's own, those of its children that have
    /// exited (reaped into its cutime and cstime, fields 16 and 17) and those of the children
    /// alive now. A backend that exits between two readings moves from the last term to the
    /// second, so a difference of two readings counts it once.
    pub fn ticks(&self) -> Option<u64> {
        let f = stat_fields(Some(self.postmaster))?;
        let mut ticks = field(&f, 14)? + field(&f, 15)? + field(&f, 16)? + field(&f, 17)?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(f) = stat_fields(Some(pid)) else {
                continue; // exited meanwhile
            };
            if field(&f, 4) == Some(u64::from(self.postmaster)) {
                ticks += field(&f, 14).unwrap_or(0) + field(&f, 15).unwrap_or(0);
            }
        }
        Some(ticks)
    }
}

/// Busy ticks of the whole machine so far (see [`machine_busy`]).
pub fn machine_ticks() -> Option<u64> {
    machine_busy()
}

/// Ticks of this process so far: the load driver and the peers it serves.
pub fn own_ticks() -> Option<u64> {
    process(None)
}

/// Milliseconds of CPU in `ticks`.
pub fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 / ticks_per_s() * 1000.0
}

/// What the counters read at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    machine: u64,
    sagad: u64,
    bench: u64,
    at: Instant,
}

impl Sample {
    /// Reads the counters now; `sagad` is the child's pid. `None` where `/proc` is not readable.
    pub fn now(sagad: u32) -> Option<Self> {
        Some(Self {
            machine: machine_busy()?,
            sagad: process(Some(sagad))?,
            bench: process(None)?,
            at: Instant::now(),
        })
    }
}

/// CPU milliseconds per saga over a window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerSaga {
    /// Every CPU of the machine.
    pub total_ms: f64,
    /// The `sagad serve` child.
    pub sagad_ms: f64,
    /// This process: the load driver, the Stripe double and the notification receiver.
    pub bench_ms: f64,
    /// The rest: PostgreSQL, the kernel's work not charged to a process, anything else running.
    pub rest_ms: f64,
    /// Share of the machine's CPUs that was busy.
    pub busy_share: f64,
}

impl PerSaga {
    /// From `before` to `after`, over `sagas` sagas finished in between.
    pub fn between(before: Sample, after: Sample, sagas: usize, cpus: usize) -> Option<Self> {
        if sagas == 0 {
            return None;
        }
        let ms = |ticks: u64| ticks as f64 / ticks_per_s() * 1000.0 / sagas as f64;
        let total = ms(after.machine.checked_sub(before.machine)?);
        let sagad = ms(after.sagad.checked_sub(before.sagad)?);
        let bench = ms(after.bench.checked_sub(before.bench)?);
        let window = after.at.duration_since(before.at).as_secs_f64();
        Some(Self {
            total_ms: total,
            sagad_ms: sagad,
            bench_ms: bench,
            rest_ms: (total - sagad - bench).max(0.0),
            busy_share: total * sagas as f64 / 1000.0 / (window * cpus.max(1) as f64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_refuses_a_non_postgres_backend() {
        // Spin until at least one tick is charged to this process.
        let before = own_ticks().expect("/proc/self/stat");
        let started = Instant::now();
        while own_ticks().unwrap() == before && started.elapsed().as_secs() < 5 {
            std::hint::black_box((0..1000).sum::<u64>());
        }
        assert!(own_ticks().unwrap() > before);
        assert_eq!(
            processes(&[std::process::id()]).map(|t| t >= before),
            Some(true)
        );
        // This test binary is no PostgreSQL backend.
        assert!(Postgres::of_backend(std::process::id()).is_none());
        assert!(machine_ticks().is_some());
    }
}
