//! The live gateways of a fleet that shares one PostgreSQL store.
//!
//! Each gateway registers its advertised URL with an expiry and renews it on every
//! heartbeat; a gateway that stops renewing (killed, partitioned from the store) drops
//! out of the live set once its expiry passes. Expiry is computed and compared by the
//! database's clock, so gateways with skewed clocks still agree on who is live.

use std::time::Duration;

use super::postgres::PostgresStore;
use super::StoreError;

/// Register or renew `url` until `expiry` from now.
const RENEW: &str = "INSERT INTO gateways (url, expires_at)
     VALUES ($1, clock_timestamp() + $2::float8 * interval '1 millisecond')
     ON CONFLICT (url) DO UPDATE SET expires_at = EXCLUDED.expires_at";

/// The live gateways' URLs, in URL order.
const LIVE: &str = "SELECT url FROM gateways WHERE expires_at > clock_timestamp() ORDER BY url";

/// Forget gateways that expired long ago (a restarted gateway on a new address).
const FORGET_EXPIRED: &str =
    "DELETE FROM gateways WHERE expires_at < clock_timestamp() - interval '1 hour'";

/// Leave the live set at once.
const LEAVE: &str = "DELETE FROM gateways WHERE url = $1";

impl PostgresStore {
    /// Renew this gateway's registration (`url`, live for `expiry`) and return the
    /// live set, this gateway included.
    pub async fn heartbeat(&self, url: &str, expiry: Duration) -> Result<Vec<String>, StoreError> {
        let conn = self.query_connection().await?;
        let millis = expiry.as_secs_f64() * 1000.0;
        conn.execute(RENEW, &[&url, &millis]).await?;
        conn.execute(FORGET_EXPIRED, &[]).await?;
        let rows = conn.query(LIVE, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Remove `url` from the live set (a gateway shutting down).
    pub async fn leave(&self, url: &str) -> Result<(), StoreError> {
        let conn = self.query_connection().await?;
        conn.execute(LEAVE, &[&url]).await?;
        Ok(())
    }
}
