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

    /// Sets the superuser's password with the server stopped, in single-user mode: no server
    /// ever accepts a connection before the password is in place. The password travels on
    /// stdin, never on a command line.
    pub(super) async fn set_password(&self, data_dir: &Path, password: &str) -> Result<(), Error> {
        let args: Vec<OsString> = vec![
            "--single".into(),
            "-D".into(),
            data_dir.into(),
            // The database to run in.
            "postgres".into(),
        ];
        let sql = format!("ALTER ROLE postgres WITH PASSWORD '{password}';\n");
        let output = self
            .run_server_program_with_input("postgres", args, Some(sql.as_bytes()))
            .await?;
        // Single-user mode reports a failed statement and still exits 0.
        if output.contains("ERROR:") || output.contains("FATAL:") {
            return Err(Error::Command {
                command: "postgres --single (setting the superuser password)".into(),
                status: std::process::ExitStatus::default(),
                stderr: output.replace(password, "********"),
            });
        }
        Ok(())
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
        self.run_server_program_with_input(name, args, None).await
    }

    async fn run_server_program_with_input(
        &self,
        name: &str,
        args: Vec<OsString>,
        input: Option<&[u8]>,
    ) -> Result<String, Error> {
        let program = self.bindir.join(name);
        match &self.runuser {
            None => run_with_input(&program, args, input).await,
            Some(runuser) => {
                let mut full: Vec<OsString> =
                    vec!["-u".into(), OS_USER.into(), "--".into(), program.into()];
                full.extend(args);
                run_with_input(runuser, full, input).await
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
    run_with_input(program, args, None).await
}

/// As [`run`], writing `input` to the command's stdin. On success, returns stdout followed by
/// stderr when there is input (single-user mode reports on both).
async fn run_with_input(
    program: &Path,
    args: Vec<OsString>,
    input: Option<&[u8]>,
) -> Result<String, Error> {
    let description = std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(command = %description, "running");
    let spawn_error = |source| Error::Spawn {
        command: description.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(&args)
        // The postgres user may not be able to enter our working directory.
        .current_dir("/")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(input).await.map_err(spawn_error)?;
        // Dropping stdin closes it: single-user mode ends at end of input.
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        if input.is_some() {
            return Ok(format!(
                "{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
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
