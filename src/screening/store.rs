//! Screening state in the database (SQLite through sqlx): counters, countries, lists and the
//! decision log. Loaded at start; written behind the engine in batches, off the call path.

use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;

use super::Change;
use super::lists::{EntryKind, ListEntry, ListName, Lists};
use super::usage::{Bucket, Usage, UsageChange};

/// One screening decision, as logged.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub call_id: String,
    pub at: u64,
    pub user: String,
    pub callee: String,
    pub source: String,
    pub profile: String,
    pub decision: String,
    pub verdict: Option<String>,
    pub score: u32,
    pub reason: String,
}

/// What the writer task is given.
#[derive(Debug)]
pub enum Write {
    Change(Change),
    Decision(DecisionRecord),
}

/// Counters of the last eight days, countries, lists and user allow-lists.
pub async fn load(pool: &SqlitePool, now: u64) -> anyhow::Result<(Usage, Lists)> {
    let since = now.saturating_sub(8 * 86_400) / 60;
    let buckets = sqlx::query(
        "SELECT user, minute, calls, international, seconds, premium_short FROM screening_usage \
         WHERE minute >= ? ORDER BY minute",
    )
    .bind(since as i64)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| -> sqlx::Result<(String, Bucket)> {
        let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
        Ok((
            r.try_get("user")?,
            Bucket {
                minute: n("minute")?,
                calls: n("calls")? as u32,
                international: n("international")? as u32,
                seconds: n("seconds")?,
                premium_short: n("premium_short")? as u32,
            },
        ))
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    let countries = sqlx::query("SELECT user, country FROM screening_countries")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("user")?, r.try_get("country")?)))
        .collect::<sqlx::Result<Vec<(String, String)>>>()?;
    let sources = sqlx::query("SELECT user, network FROM screening_sources")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("user")?, r.try_get("network")?)))
        .collect::<sqlx::Result<Vec<(String, String)>>>()?;
    let mut lists = Lists::default();
    for r in sqlx::query("SELECT list, kind, value, note, added_at FROM screening_lists")
        .fetch_all(pool)
        .await?
    {
        let (list, kind): (String, String) = (r.try_get("list")?, r.try_get("kind")?);
        let (Some(list), Some(kind)) = (ListName::parse(&list), EntryKind::parse(&kind)) else {
            tracing::warn!(list, kind, "skipping unreadable stored list entry");
            continue;
        };
        lists.add(ListEntry {
            list,
            kind,
            value: r.try_get("value")?,
            note: r.try_get("note")?,
            added_at: r.try_get::<i64, _>("added_at")?.max(0) as u64,
        });
    }
    for r in sqlx::query("SELECT user, value FROM screening_user_allow")
        .fetch_all(pool)
        .await?
    {
        lists.allow_for_user(
            &r.try_get::<String, _>("user")?,
            &r.try_get::<String, _>("value")?,
        );
    }
    Ok((Usage::restore(buckets, countries, sources), lists))
}

async fn apply(tx: &mut sqlx::SqliteConnection, write: &Write) -> sqlx::Result<()> {
    match write {
        Write::Change(Change::Usage(UsageChange::Add { user, bucket: b })) => {
            sqlx::query(
                "INSERT INTO screening_usage (user, minute, calls, international, seconds, premium_short) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user, minute) DO UPDATE SET \
                 calls = calls + excluded.calls, international = international + excluded.international, \
                 seconds = seconds + excluded.seconds, premium_short = premium_short + excluded.premium_short",
            )
            .bind(user)
            .bind(b.minute as i64)
            .bind(i64::from(b.calls))
            .bind(i64::from(b.international))
            .bind(b.seconds as i64)
            .bind(i64::from(b.premium_short))
            .execute(&mut *tx)
            .await?;
        }
        Write::Change(Change::Usage(UsageChange::Country { user, iso, at })) => {
            sqlx::query("INSERT OR IGNORE INTO screening_countries (user, country, first_seen) VALUES (?, ?, ?)")
                .bind(user)
                .bind(iso)
                .bind(*at as i64)
                .execute(&mut *tx)
                .await?;
        }
        Write::Change(Change::Usage(UsageChange::Source { user, network, at })) => {
            sqlx::query(
                "INSERT OR IGNORE INTO screening_sources (user, network, first_seen) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(network)
            .bind(*at as i64)
            .execute(&mut *tx)
            .await?;
        }
        Write::Change(Change::Usage(UsageChange::Reset { user })) => {
            sqlx::query("DELETE FROM screening_usage WHERE user = ?")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        Write::Change(
            Change::Usage(UsageChange::Remove { user }) | Change::UserForget { user },
        ) => {
            for table in [
                "screening_usage",
                "screening_countries",
                "screening_user_allow",
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE user = ?"))
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Write::Change(Change::ListAdd(e)) => {
            sqlx::query(
                "INSERT INTO screening_lists (list, kind, value, note, added_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (list, kind, value) DO UPDATE SET note = excluded.note",
            )
            .bind(e.list.as_str())
            .bind(e.kind.as_str())
            .bind(&e.value)
            .bind(&e.note)
            .bind(e.added_at as i64)
            .execute(&mut *tx)
            .await?;
        }
        Write::Change(Change::ListRemove(list, kind, value)) => {
            sqlx::query("DELETE FROM screening_lists WHERE list = ? AND kind = ? AND value = ?")
                .bind(list.as_str())
                .bind(kind.as_str())
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        Write::Change(Change::UserAllow { user, value, at }) => {
            sqlx::query("INSERT OR IGNORE INTO screening_user_allow (user, value, added_at) VALUES (?, ?, ?)")
                .bind(user)
                .bind(value)
                .bind(*at as i64)
                .execute(&mut *tx)
                .await?;
        }
        Write::Decision(d) => {
            sqlx::query(
                "INSERT INTO screening_decisions (call_id, at, user, callee, source, profile, decision, verdict, score, reason) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&d.call_id)
            .bind(d.at as i64)
            .bind(&d.user)
            .bind(&d.callee)
            .bind(&d.source)
            .bind(&d.profile)
            .bind(&d.decision)
            .bind(&d.verdict)
            .bind(i64::from(d.score))
            .bind(&d.reason)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn apply_batch(pool: &SqlitePool, batch: &[Write]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for write in batch {
        apply(&mut tx, write).await?;
    }
    tx.commit().await
}

/// How long the writer gathers after the first write of a batch: one transaction (and
/// one wake-up of this task) per interval, not one per call.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// Apply writes as they come, many to a transaction; a failed batch is retried whole (it
/// was rolled back), so nothing is lost and nothing counted twice.
pub async fn writer(pool: SqlitePool, mut writes: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::new();
    while writes.recv_many(&mut batch, 512).await > 0 {
        tokio::time::sleep(GATHER).await;
        while let Ok(write) = writes.try_recv() {
            batch.push(write);
        }
        let mut delay = std::time::Duration::from_millis(100);
        while let Err(e) = apply_batch(&pool, &batch).await {
            tracing::error!(error = %e, writes = batch.len(), "cannot store screening state; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
        batch.clear();
    }
}
