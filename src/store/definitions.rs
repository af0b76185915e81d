//! Saga definition versions, stored so that a running saga always finishes on its own version.

use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "saga `{name}` version {version} differs from the version {version} already used by this database; \
         a definition in use must not change: give the new one version {next} in its file"
    )]
    Changed {
        name: String,
        version: i32,
        next: i32,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records a definition version; the same version with other content is refused.
pub async fn register(
    pool: &PgPool,
    name: &str,
    version: i32,
    fingerprint: &str,
    definition: &serde_json::Value,
) -> Result<(), RegisterError> {
    let stored: String = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO saga_definitions (name, version, fingerprint, definition)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, version) DO NOTHING
             RETURNING fingerprint)
         SELECT fingerprint FROM ins
         UNION ALL
         SELECT fingerprint FROM saga_definitions WHERE name = $1 AND version = $2
         LIMIT 1",
    )
    .bind(name)
    .bind(version)
    .bind(fingerprint)
    .bind(definition)
    .fetch_one(pool)
    .await?;
    if stored != fingerprint {
        let next: i32 =
            sqlx::query_scalar("SELECT max(version) + 1 FROM saga_definitions WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?;
        return Err(RegisterError::Changed {
            name: name.to_owned(),
            version,
            next,
        });
    }
    Ok(())
}

/// The stored JSON of one definition version.
pub async fn get(
    pool: &PgPool,
    name: &str,
    version: i32,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT definition FROM saga_definitions WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .fetch_optional(pool)
        .await
}
