//! Durable bindings in SQLite through sqlx, so a restart loses no registration.
//! Writes arrive as [`Change`]s on a channel and are applied off the signalling path.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;

use super::{Binding, Change};
use crate::sip::transport::Transport;

/// Open (creating if needed) the database and apply migrations.
pub async fn open(path: &Path) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Every binding not yet expired at `now_s`.
pub async fn load(pool: &SqlitePool, now_s: u64) -> anyhow::Result<Vec<Binding>> {
    let rows = sqlx::query(
        "SELECT aor, contact, expires_at, call_id, cseq, transport, source, user_agent, path \
         FROM bindings WHERE expires_at > ?",
    )
    .bind(now_s as i64)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let source: String = row.try_get("source")?;
        let transport: String = row.try_get("transport")?;
        let (Ok(source), Some(transport)) = (source.parse(), Transport::parse(&transport)) else {
            tracing::warn!(source, transport, "skipping unreadable stored binding");
            continue;
        };
        out.push(Binding {
            aor: row.try_get("aor")?,
            contact: row.try_get("contact")?,
            expires_at: row.try_get::<i64, _>("expires_at")?.max(0) as u64,
            call_id: row.try_get("call_id")?,
            cseq: row.try_get::<i64, _>("cseq")?.clamp(0, i64::from(u32::MAX)) as u32,
            transport,
            source,
            user_agent: row.try_get("user_agent")?,
            path: row
                .try_get::<String, _>("path")?
                .lines()
                .map(str::to_owned)
                .collect(),
            node: None,
        });
    }
    Ok(out)
}

async fn apply(pool: &SqlitePool, change: &Change) -> sqlx::Result<()> {
    match change {
        Change::Upsert(b) => {
            sqlx::query(
                "INSERT INTO bindings (aor, contact, expires_at, call_id, cseq, transport, source, user_agent, path) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (aor, contact) DO UPDATE SET expires_at = excluded.expires_at, \
                 call_id = excluded.call_id, cseq = excluded.cseq, transport = excluded.transport, \
                 source = excluded.source, user_agent = excluded.user_agent, path = excluded.path",
            )
            .bind(&b.aor)
            .bind(&b.contact)
            .bind(b.expires_at as i64)
            .bind(&b.call_id)
            .bind(i64::from(b.cseq))
            .bind(b.transport.as_str())
            .bind(b.source.to_string())
            .bind(&b.user_agent)
            .bind(b.path.join("\n"))
            .execute(pool)
            .await?;
        }
        Change::Remove { aor, contact } => {
            sqlx::query("DELETE FROM bindings WHERE aor = ? AND contact = ?")
                .bind(aor)
                .bind(contact)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Apply changes as they come; retry a failed write rather than lose it.
pub async fn writer(pool: SqlitePool, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        let mut delay = std::time::Duration::from_millis(100);
        while let Err(e) = apply(&pool, &change).await {
            tracing::error!(error = %e, "cannot store registration; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
}
