//! The saga definitions this process knows, and every version the database has seen.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;

use super::definition::SagaDefinition;
use crate::store::definitions::{self, RegisterError};

/// What keeps a saga definition from being registered or read back.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("saga `{0}` version {1} is not known to this database")]
    UnknownVersion(String, i32),
    #[error("stored definition of saga `{0}` version {1} cannot be read: {2}")]
    Corrupt(String, i32, String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub struct Registry {
    pool: PgPool,
    latest: HashMap<String, Arc<SagaDefinition>>,
    versions: RwLock<HashMap<(String, i32), Arc<SagaDefinition>>>,
}

impl Registry {
    /// Records every definition in the database (refusing a changed version) and keeps them.
    pub async fn load(
        pool: PgPool,
        definitions: Vec<SagaDefinition>,
    ) -> Result<Self, RegistryError> {
        let mut latest: HashMap<String, Arc<SagaDefinition>> = HashMap::new();
        let mut versions = HashMap::new();
        for def in definitions {
            let json = serde_json::to_value(&def).map_err(|e| {
                RegistryError::Corrupt(def.name.clone(), def.version as i32, e.to_string())
            })?;
            definitions::register(
                &pool,
                &def.name,
                def.version as i32,
                &def.fingerprint(),
                &json,
            )
            .await?;
            let def = Arc::new(def);
            versions.insert((def.name.clone(), def.version as i32), def.clone());
            match latest.get(&def.name) {
                Some(cur) if cur.version >= def.version => {}
                _ => {
                    latest.insert(def.name.clone(), def);
                }
            }
        }
        Ok(Self {
            pool,
            latest,
            versions: RwLock::new(versions),
        })
    }

    /// The newest version of a saga: what new sagas start on.
    pub fn latest(&self, name: &str) -> Option<Arc<SagaDefinition>> {
        self.latest.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.latest.keys().cloned().collect();
        names.sort();
        names
    }

    /// A given version, from memory or, for one this process never loaded, from the database.
    pub async fn get(
        &self,
        name: &str,
        version: i32,
    ) -> Result<Arc<SagaDefinition>, RegistryError> {
        let key = (name.to_owned(), version);
        if let Some(d) = self.read().get(&key) {
            return Ok(d.clone());
        }
        let json = definitions::get(&self.pool, name, version)
            .await?
            .ok_or_else(|| RegistryError::UnknownVersion(name.to_owned(), version))?;
        let def: SagaDefinition = serde_json::from_value(json)
            .map_err(|e| RegistryError::Corrupt(name.to_owned(), version, e.to_string()))?;
        let def = Arc::new(def);
        self.versions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, def.clone());
        Ok(def)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, i32), Arc<SagaDefinition>>> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }
}
