//! Getting a database: `DATABASE_URL`, or a private embedded PostgreSQL cluster.

use std::path::PathBuf;

use crate::config::DbArgs;
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Embedded(#[from] crate::embedded_pg::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("could not create the data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(
        "no sagad PostgreSQL is running in {}: start `sagad serve` (it starts the cluster there), \
         set SAGAD_DATA_DIR to the data directory `sagad serve` uses, or set DATABASE_URL",
        .0.display()
    )]
    NotRunning(PathBuf),
    #[error(
        "cannot read the embedded PostgreSQL's data directory ({0}): run this as the user that \
         runs `sagad serve` (or root), or set DATABASE_URL"
    )]
    Unreadable(#[source] crate::embedded_pg::Error),
}

/// What to do about the embedded cluster when `DATABASE_URL` is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    /// Start it and own it (`sagad serve`): refused while another sagad process owns it.
    Start,
    /// Use the one running in the data directory, else start it (`sagad migrate`).
    AttachOrStart,
    /// Use the one running in the data directory, else refuse (the operator commands: an
    /// empty cluster of their own would only show an empty inbox).
    Attach,
}

/// A connected pool and, when sagad started one, the embedded cluster (stop it on exit).
pub struct Database {
    pub pool: sqlx::PgPool,
    pub url: String,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    pub async fn stop(self) {
        self.pool.close().await;
        if let Some(pg) = self.embedded
            && let Err(e) = pg.stop().await
        {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed");
        }
    }
}

/// Connects to `DATABASE_URL`, or to the embedded cluster running in the data directory, else
/// starts it there; applies migrations when `args.migrate` (or `force_migrate`). The pool opens
/// connections as they are needed.
pub async fn open(args: &DbArgs, force_migrate: bool) -> Result<Database, Error> {
    open_inner(args, force_migrate, 1, Embedded::AttachOrStart).await
}

/// Connects to `DATABASE_URL`, or to the embedded cluster that runs in the data directory (the
/// one `sagad serve` started); refuses, saying how to fix it, when none runs there.
pub async fn attach(args: &DbArgs) -> Result<Database, Error> {
    open_inner(args, false, 1, Embedded::Attach).await
}

/// Connects to `DATABASE_URL`, or starts (and owns) the embedded cluster, keeping at least
/// `min_connections` of the pool open (`sagad serve`: all of it).
pub async fn open_with(
    args: &DbArgs,
    force_migrate: bool,
    min_connections: u32,
) -> Result<Database, Error> {
    open_inner(args, force_migrate, min_connections, Embedded::Start).await
}

async fn open_inner(
    args: &DbArgs,
    force_migrate: bool,
    min_connections: u32,
    mode: Embedded,
) -> Result<Database, Error> {
    let (url, embedded) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = match &args.data_dir {
                None => crate::embedded_pg::default_data_dir(),
                Some(d) if d.is_absolute() => d.clone(),
                Some(d) => std::env::current_dir()
                    .map_err(|e| Error::DataDir(d.display().to_string(), e))?
                    .join(d),
            };
            let running = if mode == Embedded::Start {
                None
            } else {
                crate::embedded_pg::running_url(&dir, "postgres")
                    .await
                    .map_err(Error::Unreadable)?
            };
            match (running, mode) {
                (Some(url), _) => {
                    tracing::debug!(data_dir = %dir.display(), "using the embedded PostgreSQL running there");
                    (url, None)
                }
                (None, Embedded::Attach) => return Err(Error::NotRunning(dir)),
                (None, _) => {
                    if let Some(parent) = dir.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| Error::DataDir(parent.display().to_string(), e))?;
                    }
                    tracing::info!(data_dir = %dir.display(), "DATABASE_URL not set: starting an embedded PostgreSQL");
                    let pg = EmbeddedPostgres::start(EmbeddedOptions {
                        data_dir: dir,
                        port: args.embedded_port,
                        ephemeral: false,
                        max_connections: 200,
                    })
                    .await?;
                    let url = pg.url("postgres");
                    (url, Some(pg))
                }
            }
        }
    };
    let pool = match store::connect_pool(&url, args.pool_size, min_connections).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(pg) = embedded {
                let _ = pg.stop().await;
            }
            return Err(e.into());
        }
    };
    if args.migrate || force_migrate {
        store::migrate(&pool).await?;
    }
    Ok(Database {
        pool,
        url: url.to_string(),
        embedded,
    })
}
