//! Running `initdb`/`pg_ctl`, as the `postgres` OS user when we are root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::Error;

const OS_USER: &str = "postgres";

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True if `pid` exists (even if it belongs to another user).
pub(super) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; it delivers nothing.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Runs the server programs from one bindir, through `runuser` when root.
pub(super) struct Runner {
    bindir: PathBuf,
    /// `Some(runuser)` when we must switch to the `postgres` user.
    runuser: Option<PathBuf>,
}

impl Runner {
    pub(super) fn new(bindir: PathBuf) -> Result<Self, Error> {
        let runuser = if is_root() {
            Some(find_runuser().ok_or(Error::RunuserNotFound)?)
        } else {
            None
        };
        Ok(Self { bindir, runuser })
    }

    /// As root: give `dir` to the `postgres` user and check that it can write there.
    pub(super) async fn hand_to_postgres(&self, dir: &Path) -> Result<(), Error> {
        let Some(runuser) = &self.runuser else {
            return Ok(());
        };
        run(
            Path::new("chown"),
            vec![format!("{OS_USER}:").into(), dir.into()],
        )
        .await?;
        let probe = run(
            runuser,
            vec![
                "-u".into(),
                OS_USER.into(),
                "--".into(),
                "test".into(),
                "-w".into(),
                dir.into(),
            ],
        )
        .await;
        match probe {
            Ok(_) => Ok(()),
            Err(Error::Command { .. }) => Err(Error::Unreachable(dir.to_owned())),
            Err(other) => Err(other),
        }
    }

    pub(super) async fn initdb(&self, data_dir: &Path) -> Result<(), Error> {
        let mut args: Vec<OsString> = vec!["-D".into(), data_dir.into()];
        args.extend(
            [
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ]
            .map(OsString::from),
        );
        self.run_server_program("initdb", args).await.map(drop)
    }

    pub(super) async fn pg_ctl_start(
        &self,
        data_dir: &Path,
        log: &Path,
        options: &str,
    ) -> Result<(), Error> {
        let args: Vec<OsString> = vec![
            "-D".into(),
            data_dir.into(),
            "-w".into(),
            "-l".into(),
            log.into(),
            "-o".into(),
            options.into(),
            "start".into(),
        ];
        self.run_server_program("pg_ctl", args).await.map(drop)
    }

    pub(super) async fn pg_ctl_stop(&self, data_dir: &Path, mode: &str) -> Result<(), Error> {
        let args: Vec<OsString> = vec![
            "-D".into(),
            data_dir.into(),
            "-w".into(),
            "-m".into(),
            mode.into(),
            "stop".into(),
        ];
        self.run_server_program("pg_ctl", args).await.map(drop)
    }

    async fn run_server_program(&self, name: &str, args: Vec<OsString>) -> Result<String, Error> {
        let program = self.bindir.join(name);
        match &self.runuser {
            None => run(&program, args).await,
            Some(runuser) => {
                let mut full: Vec<OsString> =
                    vec!["-u".into(), OS_USER.into(), "--".into(), program.into()];
                full.extend(args);
                run(runuser, full).await
            }
        }
    }
}

fn find_runuser() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("runuser"))
        .find(|candidate| candidate.is_file())
}

/// Runs a command to completion; a non-zero exit becomes [`Error::Command`] with its stderr.
async fn run(program: &Path, args: Vec<OsString>) -> Result<String, Error> {
    let description = std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(command = %description, "running");
    let output = Command::new(program)
        .args(&args)
        // The postgres user may not be able to enter our working directory.
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = if stderr.trim().is_empty() {
            stdout.trim().to_owned()
        } else {
            stderr.trim().to_owned()
        };
        Err(Error::Command {
            command: description,
            status: output.status,
            stderr,
        })
    }
}
