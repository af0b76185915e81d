//! Getting a database: `DATABASE_URL`, or a private embedded PostgreSQL cluster.

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

/// Connects to `DATABASE_URL`, or starts the embedded cluster in `data_dir`; applies migrations
/// when `args.migrate` (or `force_migrate`). The pool opens connections as they are needed.
pub async fn open(args: &DbArgs, force_migrate: bool) -> Result<Database, Error> {
    open_with(args, force_migrate, 1).await
}

/// As [`open`], keeping at least `min_connections` of the pool open (`sagad serve`: all of it).
pub async fn open_with(
    args: &DbArgs,
    force_migrate: bool,
    min_connections: u32,
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
