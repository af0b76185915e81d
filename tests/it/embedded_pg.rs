//! The embedded PostgreSQL cluster manager against the machine's real binaries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sagad::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

/// Set in the child process of `orphaned_cluster_stops_when_its_owner_is_killed`.
const ORPHAN_ENV: &str = "SAGAD_TEST_ORPHAN_DIR";

fn fresh_dir(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sagad-pg-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

async fn accepts_connections(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Polls `condition` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ephemeral_cluster_serves_queries_and_vanishes_on_stop() -> anyhow::Result<()> {
    let dir = fresh_dir("eph");
    let pg = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(&dir)).await?;
    let port = pg.port();
    assert!(dir.join("PG_VERSION").is_file());

    let pool = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    sqlx::query("CREATE EXTENSION btree_gist")
        .execute(&pool)
        .await?;
    let (fsync, max_connections): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('max_connections')")
            .fetch_one(&pool)
            .await?;
    assert_eq!((fsync.as_str(), max_connections.as_str()), ("off", "300"));
    pool.close().await;

    pg.stop().await?;
    assert!(!accepts_connections(port).await, "port {port} still open");
    assert!(!dir.exists(), "{} survived stop", dir.display());
    Ok(())
}

#[tokio::test]
async fn second_start_reuses_the_initialised_cluster() -> anyhow::Result<()> {
    let dir = fresh_dir("reuse");
    let result = reuse_scenario(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn reuse_scenario(dir: &Path) -> anyhow::Result<()> {
    let first = EmbeddedPostgres::start(EmbeddedOptions::persistent(dir)).await?;
    let pool = sqlx::PgPool::connect(&first.url("postgres")).await?;
    sqlx::query("CREATE TABLE survives (note text)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO survives VALUES ('kept')")
        .execute(&pool)
        .await?;
    pool.close().await;
    let system_id = control_system_id(dir)?;
    first.stop().await?;
    assert!(
        dir.join("PG_VERSION").is_file(),
        "persistent dir was removed"
    );

    let second = EmbeddedPostgres::start(EmbeddedOptions::persistent(dir)).await?;
    // A second initdb would have failed on the non-empty dir or minted a new system id.
    assert_eq!(control_system_id(dir)?, system_id);
    let pool = sqlx::PgPool::connect(&second.url("postgres")).await?;
    let note: String = sqlx::query_scalar("SELECT note FROM survives")
        .fetch_one(&pool)
        .await?;
    assert_eq!(note, "kept");
    pool.close().await;
    second.stop().await?;
    Ok(())
}

/// The postmaster's pid, from the first line of the cluster's `postmaster.pid`.
fn postmaster_pid(dir: &Path) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(dir.join("postmaster.pid")).context("read postmaster.pid")?;
    text.lines()
        .next()
        .context("empty postmaster.pid")?
        .trim()
        .parse()
        .context("postmaster.pid's pid")
}

/// True while a process with this pid runs: a zombie (exited, not yet reaped — in a container
/// whose init does not reap, it may stay one) does not count.
fn process_exists(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state …": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// The bytes of `global/pg_control` that hold the system identifier set by initdb.
fn control_system_id(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let control = std::fs::read(dir.join("global/pg_control")).context("read pg_control")?;
    Ok(control.get(..8).context("short pg_control")?.to_vec())
}

#[tokio::test]
async fn a_stale_server_from_a_dead_owner_is_replaced() -> anyhow::Result<()> {
    let dir = fresh_dir("stale");
    let result = stale_scenario(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn stale_scenario(dir: &Path) -> anyhow::Result<()> {
    let first = EmbeddedPostgres::start(EmbeddedOptions::persistent(dir)).await?;
    let first_port = first.port();

    // While its owner lives, nobody else may take the cluster over.
    let in_use = EmbeddedPostgres::start(EmbeddedOptions::persistent(dir)).await;
    match in_use {
        Err(sagad::embedded_pg::Error::InUse { owner, .. }) => {
            assert_eq!(owner, std::process::id())
        }
        other => bail!("expected InUse, got {other:?}"),
    }

    // Pretend the owner died (pid 0x3fffffff is above Linux's pid_max).
    let first_postmaster = postmaster_pid(dir)?;
    assert!(process_exists(first_postmaster));
    std::fs::write(dir.join("sagad.owner"), "1073741823")?;
    let second = EmbeddedPostgres::start(EmbeddedOptions::persistent(dir)).await?;
    // The stale postmaster is gone (whether or not the new one got its port back) and the new
    // one is another process.
    let second_postmaster = postmaster_pid(dir)?;
    assert_ne!(second_postmaster, first_postmaster);
    assert!(
        !process_exists(first_postmaster),
        "the stale server (pid {first_postmaster}, port {first_port}) still runs"
    );
    // The first handle's watchdog must leave the new postmaster alone.
    drop(first);
    let pool = sqlx::PgPool::connect(&second.url("postgres")).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    pool.close().await;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn dropping_the_handle_stops_the_cluster() -> anyhow::Result<()> {
    let dir = fresh_dir("drop");
    let pg = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(&dir)).await?;
    let port = pg.port();
    drop(pg);
    let gone = eventually(Duration::from_secs(10), || async {
        !accepts_connections(port).await && !dir.exists()
    })
    .await;
    assert!(gone, "cluster on port {port} outlived its handle");
    Ok(())
}

/// Re-runs this test binary as a child that starts a durable cluster, SIGKILLs it, and
/// expects the watchdog to shut the cluster down cleanly (no `postmaster.pid` left).
#[tokio::test]
async fn orphaned_cluster_stops_when_its_owner_is_killed() -> anyhow::Result<()> {
    let work = fresh_dir("orphan");
    std::fs::create_dir_all(&work)?;
    let result = orphan_scenario(&work).await;
    // Do not leak a postmaster into the rest of the run.
    if result.is_err()
        && let Ok(pid) = std::fs::read_to_string(work.join("data/postmaster.pid"))
        && let Some(pid) = pid.lines().next().and_then(|line| line.trim().parse().ok())
    {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn orphan_scenario(work: &Path) -> anyhow::Result<()> {
    let pid_file = work.join("data").join("postmaster.pid");
    let port_file = work.join("port");
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["embedded_pg::orphan_owner", "--exact", "--ignored"])
        .env(ORPHAN_ENV, work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let started = eventually(Duration::from_secs(30), || async { port_file.exists() }).await;
    if !started {
        let _ = child.kill().await;
        bail!("child never reported its cluster's port");
    }
    let port: u16 = std::fs::read_to_string(&port_file)?.trim().parse()?;
    assert!(accepts_connections(port).await);
    assert!(pid_file.exists());

    child.kill().await?; // SIGKILL: no destructor runs in the child.
    let stopped = eventually(Duration::from_secs(15), || async {
        !accepts_connections(port).await && !pid_file.exists()
    })
    .await;
    if !stopped {
        bail!("orphaned cluster on port {port} survived its owner");
    }
    Ok(())
}

/// The child half of the test above; does nothing unless run by it.
#[tokio::test]
#[ignore = "run as a child process by orphaned_cluster_stops_when_its_owner_is_killed"]
async fn orphan_owner() -> anyhow::Result<()> {
    let Some(work) = std::env::var_os(ORPHAN_ENV).map(PathBuf::from) else {
        return Ok(());
    };
    let pg = EmbeddedPostgres::start(EmbeddedOptions::persistent(work.join("data"))).await?;
    let tmp = work.join("port.tmp");
    std::fs::write(&tmp, pg.port().to_string())?;
    std::fs::rename(&tmp, work.join("port"))?;
    tokio::time::sleep(Duration::from_secs(120)).await;
    pg.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_deep_data_dir_gets_a_short_socket_dir() -> anyhow::Result<()> {
    // Too long for a Unix socket path inside the data directory itself.
    let dir = fresh_dir("deep").join("a-directory-name-long-enough-to-overflow-sun-path");
    let pg = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(&dir)).await?;
    let pool = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    let socket_dir: String =
        sqlx::query_scalar("SELECT current_setting('unix_socket_directories')")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    assert!(
        socket_dir.len() + ".s.PGSQL.65535".len() < 100,
        "{socket_dir}"
    );
    assert!(Path::new(&socket_dir).exists());
    pg.stop().await?;
    assert!(
        !Path::new(&socket_dir).exists(),
        "{socket_dir} survived stop"
    );
    if let Some(parent) = dir.parent() {
        std::fs::remove_dir_all(parent)?;
    }
    Ok(())
}

/// A data directory inside a private (mode 0700) directory of the user running sagad. As root,
/// the cluster runs as `postgres`, which cannot enter it: sagad says so and what to do. As any
/// other user, the cluster runs as that user, and the same directory serves.
#[tokio::test]
async fn a_data_dir_the_postgres_user_cannot_reach_is_reported() -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let private = fresh_dir("private");
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let dir = private.join("data");
    let result = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(&dir)).await;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let checked = match result {
        Err(error @ sagad::embedded_pg::Error::Unreachable(_)) if root => {
            let message = error.to_string();
            if message.contains("DATABASE_URL") && message.contains(&*dir.to_string_lossy()) {
                Ok(())
            } else {
                Err(anyhow::anyhow!("unhelpful message: {message}"))
            }
        }
        Ok(pg) if !root => {
            let port = pg.port();
            pg.stop().await?;
            if accepts_connections(port).await {
                Err(anyhow::anyhow!("the cluster still listens on {port}"))
            } else {
                Ok(())
            }
        }
        other => Err(anyhow::anyhow!(
            "as {}: unexpected {other:?}",
            if root { "root" } else { "another user" }
        )),
    };
    let _ = std::fs::remove_dir_all(&private);
    checked
}

/// The cluster's URL with another password (or none).
fn with_password(url: &str, password: Option<&str>) -> String {
    let mut u = reqwest::Url::parse(url).expect("cluster url");
    u.set_password(password).expect("url takes a password");
    u.to_string()
}

#[tokio::test]
async fn the_cluster_refuses_connections_without_its_password() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("auth");
    let pg = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(&dir)).await?;
    let url = pg.url("postgres");

    for (what, attempt) in [
        ("no password", with_password(&url, None)),
        ("a wrong password", with_password(&url, Some("guess"))),
    ] {
        match sqlx::PgPool::connect(&attempt).await {
            Ok(_) => bail!("connected with {what}"),
            Err(e) => {
                let code = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .map(|c| c.into_owned());
                // 28P01: invalid_password; 28000: invalid_authorization_specification.
                assert!(
                    matches!(code.as_deref(), Some("28P01" | "28000"))
                        || e.to_string().contains("password"),
                    "{what}: {e}"
                );
            }
        }
    }
    let pool = sqlx::PgPool::connect(&url).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    pool.close().await;

    let hba = std::fs::read_to_string(dir.join("pg_hba.conf"))?;
    let rules: Vec<&str> = hba
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(
        !rules.is_empty() && rules.iter().all(|r| r.ends_with("scram-sha-256")),
        "{hba}"
    );
    let password_file = std::fs::metadata(dir.join("sagad.password"))?;
    assert_eq!(password_file.permissions().mode() & 0o777, 0o600);

    // Another local account, as the probe did it.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let psql = sagad::embedded_pg::find_bindir()?.join("psql");
    if root && psql.is_file() {
        for host in ["127.0.0.1".to_owned(), dir.display().to_string()] {
            let out = tokio::process::Command::new("runuser")
                .args(["-u", "nobody", "--"])
                .arg(&psql)
                .args([
                    "-h",
                    &host,
                    "-p",
                    &pg.port().to_string(),
                    "-U",
                    "postgres",
                    "-w",
                ])
                .args(["-d", "postgres", "-c", "SELECT 1"])
                .current_dir("/")
                .stdin(std::process::Stdio::null())
                .output()
                .await?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "nobody got in through {host}: {err}");
            assert!(
                err.contains("password") || err.contains("Permission denied"),
                "{host}: {err}"
            );
        }
    }
    pg.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_port_is_kept_across_restarts() -> anyhow::Result<()> {
    let dir = fresh_dir("port");
    let result = async {
        let first = EmbeddedPostgres::start(EmbeddedOptions::persistent(&dir)).await?;
        let port = first.port();
        let url = first.url("postgres");
        first.stop().await?;
        let second = EmbeddedPostgres::start(EmbeddedOptions::persistent(&dir)).await?;
        assert_eq!(second.port(), port);
        assert_eq!(second.url("postgres"), url, "same port, same password");
        assert_eq!(
            std::fs::read_to_string(dir.join("sagad.port"))?.trim(),
            port.to_string()
        );
        second.stop().await?;
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[tokio::test]
async fn operator_commands_use_the_running_cluster_or_say_how() -> anyhow::Result<()> {
    let dir = fresh_dir("cli");
    let empty = fresh_dir("cli-none");
    let result = async {
        // The cluster `sagad serve` would run, with one event in its inbox.
        let pg = EmbeddedPostgres::start(EmbeddedOptions::persistent(&dir)).await?;
        let pool = sqlx::PgPool::connect(&pg.url("postgres")).await?;
        sagad::store::migrate(&pool).await?;
        sqlx::query(
            "INSERT INTO stripe_events (id, event_type, payload, status)
             VALUES ('evt_in_the_serving_cluster', 'customer.created', '{}', 'ignored')",
        )
        .execute(&pool)
        .await?;
        pool.close().await;

        let sagad = |data_dir: &Path| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sagad"));
            cmd.args(["stripe", "events", "list"])
                .env_remove("DATABASE_URL")
                .env("SAGAD_DATA_DIR", data_dir);
            cmd
        };
        let out = sagad(&dir).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("evt_in_the_serving_cluster"), "{stdout}");

        // Nothing runs there: a refusal that says how, and no new cluster.
        let out = sagad(&empty).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no sagad PostgreSQL is running"),
            "{stderr}"
        );
        assert!(
            stderr.contains("sagad serve") && stderr.contains("DATABASE_URL"),
            "{stderr}"
        );
        assert!(!empty.join("PG_VERSION").exists(), "a cluster was started");
        pg.stop().await?;
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
    result
}
