//! The PostgreSQL store's connection pools (deadpool-postgres), and how their errors
//! become [`StoreError`]s.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::StoreError;

/// A pool of at most `size` connections to `config`.
pub(super) fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|err| StoreError::Task(format!("building the connection pool: {err}")))
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => StoreError::Postgres(err),
            other => StoreError::Task(format!("connection pool: {other}")),
        }
    }
}
