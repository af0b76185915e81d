//! A private PostgreSQL cluster started from the machine's own binaries.
//!
//! `sagad serve`/`sagad demo` use it when `DATABASE_URL` is unset, and the integration
//! tests use an ephemeral one. As root, the cluster runs as the `postgres` OS user
//! (initdb refuses root) through `runuser`. A watchdog process stops the cluster if
//! the process that started it dies, even by SIGKILL.
//!
//! Nobody else on the machine can enter it: every connection, over 127.0.0.1 or the Unix
//! socket, authenticates with scram-sha-256 as `postgres` with a password generated for the
//! cluster and kept in `sagad.password` (mode 0600, readable by sagad's user only) in the data
//! directory. The password is set in single-user mode before the server first starts, so the
//! server never runs without it. The port is chosen once and kept in `sagad.port`, so it stays
//! the same across restarts; other sagad commands find the running cluster through the data
//! directory ([`running_url`]).

mod bindir;
mod command;
mod watchdog;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bindir::find_bindir;
use command::Runner;
use watchdog::{Orders, Watchdog};

/// Unix socket paths must fit in `sun_path` (108 bytes on Linux, 104 on macOS).
const MAX_SOCKET_PATH: usize = 100;
/// How often a start is retried when an automatically chosen port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_FILE: &str = "postgres.log";
/// Records which process owns the running cluster, so a second owner backs off.
const OWNER_FILE: &str = "sagad.owner";
/// The superuser's password (mode 0600, owned by sagad's user).
const PASSWORD_FILE: &str = "sagad.password";
/// The port the cluster listens on, kept across restarts.
const PORT_FILE: &str = "sagad.port";
/// Written over `pg_hba.conf` at every start.
const HBA: &str =
    "# Written by sagad at every start: every connection authenticates with the password in
# sagad.password (scram-sha-256); nothing is trusted, whoever connects.
local  all  all                 scram-sha-256
host   all  all  127.0.0.1/32   scram-sha-256
";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, \
         via `pg_config --bindir` and in /usr/lib/postgresql/*/bin). Install PostgreSQL \
         (e.g. `apt-get install postgresql` or `brew install postgresql@15`), or set \
         DATABASE_URL to an existing server"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but `runuser` was not found; it is needed to run PostgreSQL as the \
         `postgres` OS user (install util-linux), or set DATABASE_URL to an existing server"
    )]
    RunuserNotFound,
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not empty but holds no PostgreSQL cluster (no PG_VERSION); \
         refusing to initdb over it: choose an empty or new directory",
        .0.display()
    )]
    NotACluster(PathBuf),
    #[error(
        "the `postgres` OS user cannot write to {}: PostgreSQL runs as that user when sagad \
         runs as root, so the data directory and all its parents must be reachable by it \
         (e.g. use /var/lib/sagad), or set DATABASE_URL to an existing server",
        .0.display()
    )]
    Unreachable(PathBuf),
    #[error(
        "a PostgreSQL server is already running on {} for sagad process {owner}; \
         stop that process first or use another data directory",
        dir.display()
    )]
    InUse { dir: PathBuf, owner: u32 },
    #[error("could not find a free port on 127.0.0.1: {0}")]
    NoFreePort(#[source] io::Error),
    #[error(
        "a PostgreSQL server runs in {} but {PASSWORD_FILE} is missing: it was not started by \
         this version of sagad; stop it and start `sagad serve` again",
        .0.display()
    )]
    NoPassword(PathBuf),
    #[error(
        "PostgreSQL did not start on 127.0.0.1:{port}: {reason}\n--- last lines of {} ---\n{log_tail}",
        log.display()
    )]
    Start {
        port: u16,
        reason: String,
        log: PathBuf,
        log_tail: String,
    },
}

/// How to run the private cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Where the cluster lives: created if missing, `initdb` if empty, reused otherwise.
    pub data_dir: PathBuf,
    /// `None`: the port kept in the data directory, else a free one on 127.0.0.1 (then kept).
    pub port: Option<u16>,
    /// For tests: no fsync, no synchronous commit, no full-page writes; the data
    /// directory is deleted on stop (or by the watchdog if the owner dies).
    pub ephemeral: bool,
    pub max_connections: u32,
}

impl EmbeddedOptions {
    /// A durable cluster in `data_dir` on a free port.
    pub fn persistent(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: None,
            ephemeral: false,
            max_connections: 100,
        }
    }

    /// A throwaway cluster for tests, deleted on stop.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: None,
            ephemeral: true,
            max_connections: 300,
        }
    }
}

/// Where `sagad serve` keeps its embedded cluster by default.
///
/// As root this is `/var/lib/sagad/postgres` (the `postgres` user must be able to reach
/// it, which rules out `/root`); otherwise `$XDG_DATA_HOME/sagad/postgres` or
/// `~/.local/share/sagad/postgres`.
pub fn default_data_dir() -> PathBuf {
    if command::is_root() {
        return PathBuf::from("/var/lib/sagad/postgres");
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    data_home.join("sagad").join("postgres")
}

/// A running private cluster. Call [`EmbeddedPostgres::stop`] to shut it down; if the
/// value is dropped instead, or the process dies, the watchdog shuts it down.
pub struct EmbeddedPostgres {
    runner: Runner,
    data_dir: PathBuf,
    socket_dir: Option<PathBuf>,
    port: u16,
    password: String,
    ephemeral: bool,
    watchdog: Watchdog,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

impl EmbeddedPostgres {
    /// Starts (and if needed initialises) the cluster and waits until it accepts connections.
    #[tracing::instrument(skip_all, fields(data_dir = %opts.data_dir.display(), port))]
    pub async fn start(opts: EmbeddedOptions) -> Result<Self, Error> {
        let runner = Runner::new(find_bindir()?)?;
        let data_dir = std::path::absolute(&opts.data_dir).map_err(|source| Error::Io {
            path: opts.data_dir.clone(),
            source,
        })?;

        prepare_data_dir(&runner, &data_dir).await?;
        stop_stale_server(&runner, &data_dir).await?;
        let password = secure(&runner, &data_dir).await?;
        let socket_dir = socket_dir_for(&runner, &data_dir).await?;
        let sockets = socket_dir.clone().unwrap_or_else(|| data_dir.clone());

        let mut kept_port = match opts.port {
            Some(_) => None,
            None => read_port(&data_dir).await,
        };
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = match (opts.port, kept_port.take()) {
                (Some(port), _) | (None, Some(port)) => port,
                (None, None) => free_port()?,
            };
            match start_server(&runner, &data_dir, &sockets, port, &opts).await {
                Ok(()) => break port,
                Err(error)
                    if opts.port.is_none() && attempt < PORT_ATTEMPTS && port_taken(&error) =>
                {
                    tracing::warn!(
                        port,
                        "port was taken before PostgreSQL could bind it; retrying"
                    );
                }
                Err(error) => return Err(error),
            }
        };
        tracing::Span::current().record("port", port);
        write_private(&data_dir.join(PORT_FILE), &port.to_string()).await?;

        let watchdog = match guard(&data_dir, port, opts.ephemeral, socket_dir.as_ref()).await {
            Ok(watchdog) => watchdog,
            Err(error) => {
                // Nothing would stop this server later: stop it now.
                if let Err(stop_error) = runner.pg_ctl_stop(&data_dir, "immediate").await {
                    tracing::warn!(%stop_error, "could not stop the unguarded server");
                }
                return Err(error);
            }
        };
        let owner_file = data_dir.join(OWNER_FILE);
        tokio::fs::write(&owner_file, std::process::id().to_string())
            .await
            .map_err(|source| Error::Io {
                path: owner_file,
                source,
            })?;

        let pg = Self {
            runner,
            data_dir,
            socket_dir,
            port,
            password,
            ephemeral: opts.ephemeral,
            watchdog,
        };
        pg.wait_until_ready().await?;
        tracing::info!(port, "embedded PostgreSQL is ready");
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        url(self.port, &self.password, database)
    }

    /// Fast shutdown (`pg_ctl stop -m fast`); deletes the data directory if ephemeral.
    #[tracing::instrument(skip_all, fields(port = self.port))]
    pub async fn stop(self) -> Result<(), Error> {
        self.watchdog.dismiss().await;
        let result = self.runner.pg_ctl_stop(&self.data_dir, "fast").await;
        if let Some(dir) = &self.socket_dir {
            remove_dir(dir).await?;
        }
        if self.ephemeral {
            remove_dir(&self.data_dir).await?;
        } else {
            let _ = tokio::fs::remove_file(self.data_dir.join(OWNER_FILE)).await;
        }
        result?;
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }

    async fn wait_until_ready(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(_) => return Ok(()),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(start_error(&self.data_dir, self.port, error.to_string()).await);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Puts the freshly started postmaster under a watchdog.
async fn guard(
    data_dir: &Path,
    port: u16,
    ephemeral: bool,
    socket_dir: Option<&PathBuf>,
) -> Result<Watchdog, Error> {
    let pid_file = data_dir.join("postmaster.pid");
    let Some(postmaster_pid) = read_postmaster_pid(&pid_file).await else {
        return Err(start_error(
            data_dir,
            port,
            format!("{} names no postmaster", pid_file.display()),
        )
        .await);
    };
    tracing::debug!(postmaster_pid, "server started");
    Watchdog::spawn(Orders {
        postmaster_pid,
        data_dir,
        ephemeral,
        socket_dir,
    })
}

fn url(port: u16, password: &str, database: &str) -> String {
    format!("postgres://postgres:{password}@127.0.0.1:{port}/{database}")
}

/// The URL (for `database`) of the cluster running in `data_dir` (started by another sagad
/// process, e.g. `sagad serve`), or `None` when no server runs there. Reading it takes sagad's
/// OS user (or root): the data directory is private.
pub async fn running_url(data_dir: &Path, database: &str) -> Result<Option<String>, Error> {
    let pid_file = data_dir.join("postmaster.pid");
    let text = match tokio::fs::read_to_string(&pid_file).await {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: pid_file,
                source,
            });
        }
    };
    // Line 1: the postmaster's pid; line 4: its port.
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
    let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
    let (Some(pid), Some(port)) = (pid, port) else {
        return Ok(None);
    };
    if !is_postmaster(pid) {
        return Ok(None);
    }
    let password_file = data_dir.join(PASSWORD_FILE);
    match tokio::fs::read_to_string(&password_file).await {
        Ok(password) => Ok(Some(url(port, password.trim(), database))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(Error::NoPassword(data_dir.to_owned()))
        }
        Err(source) => Err(Error::Io {
            path: password_file,
            source,
        }),
    }
}

/// Puts sagad's `pg_hba.conf` in place and makes sure the superuser has the password kept in
/// the data directory (generating and setting one if there is none yet); returns it.
async fn secure(runner: &Runner, data_dir: &Path) -> Result<String, Error> {
    let hba = data_dir.join("pg_hba.conf");
    // Written in place: the file keeps its owner (the cluster's OS user) and mode.
    tokio::fs::write(&hba, HBA)
        .await
        .map_err(|source| Error::Io { path: hba, source })?;
    let file = data_dir.join(PASSWORD_FILE);
    match tokio::fs::read_to_string(&file).await {
        Ok(password) if !password.trim().is_empty() => return Ok(password.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path: file, source }),
    }
    let password = hex::encode(rand::random::<[u8; 32]>());
    // Set first, then kept: if sagad dies in between, the next start sets a new one.
    runner.set_password(data_dir, &password).await?;
    write_private(&file, &password).await?;
    tracing::info!(file = %file.display(), "generated the embedded PostgreSQL password");
    Ok(password)
}

/// Writes `contents` to `path` atomically, readable and writable by this user only.
async fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let target = path.to_owned();
    let path = path.to_owned();
    let contents = contents.to_owned();
    let tmp = path.with_extension("tmp");
    let result = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| (tmp.clone(), source))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| (tmp.clone(), source))?;
        std::fs::rename(&tmp, &path).map_err(|source| (path.clone(), source))
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err((path, source))) => Err(Error::Io { path, source }),
        Err(join) => Err(Error::Io {
            path: target,
            source: io::Error::other(join),
        }),
    }
}

async fn read_port(data_dir: &Path) -> Option<u16> {
    tokio::fs::read_to_string(data_dir.join(PORT_FILE))
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Creates the directory and runs initdb unless it already holds a cluster.
async fn prepare_data_dir(runner: &Runner, data_dir: &Path) -> Result<(), Error> {
    if data_dir.join("PG_VERSION").is_file() {
        tracing::debug!("reusing the initialised cluster");
        return Ok(());
    }
    let io = |source| Error::Io {
        path: data_dir.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(data_dir).await.map_err(io)?;
    let mut entries = tokio::fs::read_dir(data_dir).await.map_err(io)?;
    if entries.next_entry().await.map_err(io)?.is_some() {
        return Err(Error::NotACluster(data_dir.to_owned()));
    }
    runner.hand_to_postgres(data_dir).await?;
    tracing::info!("initialising a new PostgreSQL cluster");
    runner.initdb(data_dir).await
}

/// A postmaster left behind by a killed owner: stop it so we start with our own settings.
async fn stop_stale_server(runner: &Runner, data_dir: &Path) -> Result<(), Error> {
    let Some(pid) = read_postmaster_pid(&data_dir.join("postmaster.pid")).await else {
        return Ok(());
    };
    if !is_postmaster(pid) {
        return Ok(()); // A stale pid file; the postmaster handles that itself.
    }
    if let Ok(owner) = tokio::fs::read_to_string(data_dir.join(OWNER_FILE)).await
        && let Ok(owner) = owner.trim().parse::<u32>()
        && command::process_alive(owner)
    {
        return Err(Error::InUse {
            dir: data_dir.to_owned(),
            owner,
        });
    }
    tracing::warn!(
        pid,
        "stopping a PostgreSQL server left behind by a previous run"
    );
    runner.pg_ctl_stop(data_dir, "fast").await
}

/// The data directory itself when the socket path fits, else a short directory in /tmp.
async fn socket_dir_for(runner: &Runner, data_dir: &Path) -> Result<Option<PathBuf>, Error> {
    // ".s.PGSQL.65535" plus a separator.
    if data_dir.as_os_str().len() + 15 < MAX_SOCKET_PATH {
        return Ok(None);
    }
    let dir = PathBuf::from("/tmp").join(format!("sagad-pg-{}", uuid::Uuid::new_v4().simple()));
    // Private: created new (never an existing directory) with no access for anyone else.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
    }
    runner.hand_to_postgres(&dir).await?;
    Ok(Some(dir))
}

async fn start_server(
    runner: &Runner,
    data_dir: &Path,
    socket_dir: &Path,
    port: u16,
    opts: &EmbeddedOptions,
) -> Result<(), Error> {
    let mut settings = vec![
        format!("-p {port}"),
        format!("-k {}", shell_quote(&socket_dir.to_string_lossy())),
        "-c listen_addresses=127.0.0.1".to_owned(),
        "-c unix_socket_permissions=0700".to_owned(),
        format!("-c max_connections={}", opts.max_connections),
    ];
    if opts.ephemeral {
        settings.extend(
            [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ]
            .map(|setting| format!("-c {setting}")),
        );
    }
    let log = data_dir.join(LOG_FILE);
    match runner
        .pg_ctl_start(data_dir, &log, &settings.join(" "))
        .await
    {
        Ok(()) => Ok(()),
        Err(error) => Err(start_error(data_dir, port, error.to_string()).await),
    }
}

async fn start_error(data_dir: &Path, port: u16, reason: String) -> Error {
    let log = data_dir.join(LOG_FILE);
    let log_tail = match tokio::fs::read_to_string(&log).await {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(error) => format!("(could not read the log: {error})"),
    };
    Error::Start {
        port,
        reason,
        log,
        log_tail,
    }
}

fn port_taken(error: &Error) -> bool {
    matches!(error, Error::Start { log_tail, .. } if log_tail.contains("could not bind")
        || log_tail.contains("Address already in use"))
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::NoFreePort)?;
    Ok(listener.local_addr().map_err(Error::NoFreePort)?.port())
}

async fn read_postmaster_pid(pid_file: &Path) -> Option<u32> {
    let text = tokio::fs::read_to_string(pid_file).await.ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Alive and, where /proc tells us, really a postgres process (pids get reused).
fn is_postmaster(pid: u32) -> bool {
    if !command::process_alive(pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) => name.trim() == "postgres",
        Err(_) => true,
    }
}

async fn remove_dir(dir: &Path) -> Result<(), Error> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Quotes for the shell that `pg_ctl` runs the postmaster command line through.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
