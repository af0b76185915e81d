//! Everything that talks SQL. Functions take `&mut PgConnection` (or a pool) so the engine can put a
//! step's effect, its events and its projection updates in one transaction.

pub mod bookings;
pub mod breakers;
pub mod console;
pub mod definitions;
pub mod events;
pub mod feed;
pub mod inventory;
pub mod kept;
pub mod listen;
pub mod operator;
pub mod outbound;
pub mod progress;
pub mod projections;
pub mod queues;
pub mod relay;
pub mod sagas;
mod stmt;
pub mod stripe_inbox;

#[cfg(test)]
mod snapshots;

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};

/// The channel that wakes idle workers when a saga becomes due.
pub const WORK_CHANNEL: &str = "sagad_work";
/// The channel that tells start-saga waiters a saga reached a terminal state.
pub const DONE_CHANNEL: &str = "sagad_saga_done";
/// The channel that tells the worker driving a saga that a guest asked to cancel it (payload:
/// the saga id), so that it learns of it before its next remote step without a query.
pub const CANCEL_CHANNEL: &str = "sagad_cancel";

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
}

/// The database's clock ([`crate::clock::Clock`] carries it forward).
pub async fn db_now(
    conn: impl sqlx::PgExecutor<'_>,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

/// Whether the database answers a statement (for `/readyz`).
pub async fn ping(conn: impl sqlx::PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await?;
    Ok(())
}

/// SQLSTATE codes sagad reacts to, matched by code, never by message text.
pub mod sqlstate {
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const EXCLUSION_VIOLATION: &str = "23P01";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// sagad's own (`sagad_require`, migration 0005): a statement that was to turn a hold into a
    /// booking found no live hold, and wrote nothing.
    pub const HOLD_LOST: &str = "SG001";
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// A pooled connection idle at least this long is pinged before use.
const PING_IDLE_AFTER: Duration = Duration::from_secs(5);

/// Connects a pool of `max_connections` to `url` that opens connections as they are needed.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    connect_pool(url, max_connections, 1).await
}

/// Connects a pool of `max_connections` to `url` that keeps at least `min_connections` open
/// (opened in the background). A daemon keeps its whole pool open: a connection made when a
/// burst needs it costs that request a fork, the authentication and the first preparation of
/// every statement it runs, tens of milliseconds on a busy server.
pub async fn connect_pool(
    url: &str,
    max_connections: u32,
    min_connections: u32,
) -> Result<PgPool, Error> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| Error::Url(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(min_connections.clamp(1, max_connections))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out: one more round trip per step. Ping only the
        // ones that sat idle long enough to have been cut (server restart, a proxy's idle
        // timeout); a connection that fails anyway is dropped, and every caller copes with a
        // failed statement (a step is retried, an API request answers 503).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(|conn, _| {
            Box::pin(async move {
                // Every statement sagad prepares is a short OLTP statement whose best plan does
                // not depend on its parameters; left to `auto`, PostgreSQL re-plans the
                // data-modifying CTEs (step outcome, event append) on *every* execution because
                // their custom plans look cheaper, and planning cost more than executing
                // (docs/BENCHMARKS.md). Optional filters are written as separate statements
                // (`QueryBuilder`), not `$1 IS NULL OR …`, so generic plans suit them too.
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// True when every migration this binary knows is applied (for `/readyz`).
pub async fn migrations_current(pool: &PgPool) -> Result<bool, Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .or_else(|e| match sqlstate(&e).as_deref() {
                Some("42P01") => Ok(Vec::new()), // undefined_table: nothing applied yet
                _ => Err(e),
            })?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version)))
}

/// The plan PostgreSQL runs `query` with, one line per row: the generic plan, as sagad's
/// connections use (`plan_cache_mode = force_generic_plan`, see [`connect_pool`]), whatever the
/// bound values. (`EXPLAIN` of the statement itself would plan it for its values.) The statement
/// is prepared under a name of its own on `conn`, explained with `EXPLAIN EXECUTE` and the same
/// arguments (as literals), and deallocated.
pub async fn explain_generic<'q>(
    conn: &mut sqlx::PgConnection,
    mut query: impl sqlx::Execute<'q, sqlx::Postgres>,
) -> Result<String, sqlx::Error> {
    use sqlx::Arguments;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "sagad_plan_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let args = query
        .take_arguments()
        .map_err(sqlx::Error::Encode)?
        .unwrap_or_default();
    let sql = query.sql();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE {name} AS {}",
        sql.as_str()
    )))
    .execute(&mut *conn)
    .await?;
    // `EXECUTE`'s arguments cannot be the protocol's parameters: the server quotes the values as
    // literals first (typed by the binds, coerced to the statement's parameter types).
    let literals: Vec<String> = if args.len() == 0 {
        Vec::new()
    } else {
        let quote = format!(
            "SELECT ARRAY[{}]::text[]",
            (1..=args.len())
                .map(|i| format!("quote_nullable(${i})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(quote), args)
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?
    };
    let explain = if literals.is_empty() {
        format!("EXPLAIN EXECUTE {name}")
    } else {
        format!("EXPLAIN EXECUTE {name}({})", literals.join(", "))
    };
    let lines: Result<Vec<String>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .persistent(false)
        .fetch_all(&mut *conn)
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {name}")))
        .execute(&mut *conn)
        .await?;
    Ok(lines?.join("\n"))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, recursively.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_sql_runs_outside_the_store() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let store = src.join("store");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(
            files.len() > 50,
            "found only {} files under src/",
            files.len()
        );
        let statements = ["sqlx::query", "sqlx::raw_sql", "QueryBuilder"];
        for file in files.iter().filter(|f| !f.starts_with(&store)) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for statement in &statements {
                    assert!(
                        !line.contains(statement),
                        "{}:{}: SQL outside src/store: {line}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1
                    );
                }
            }
        }
    }
}
