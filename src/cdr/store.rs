//! The CDR database through sqlx's Any driver: SQLite (a file, the default) or PostgreSQL
//! (a `postgres://` URL), with one set of migrations and queries both understand.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::Record;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/cdr");

/// Where records are stored. The pool connects lazily: Warden starts (and journals its
/// records) while the database is away.
#[derive(Clone)]
pub struct Store {
    /// Queries (the admin API's) and, on PostgreSQL, everything.
    pool: AnyPool,
    /// On SQLite, one connection of its own for every write: SQLite has one writer at a
    /// time anyway, and a connection that only writes keeps its page cache (one another
    /// connection has written to must read the pages it needs again).
    writes: AnyPool,
    /// "sqlite" or "postgres", for logs and metrics.
    pub kind: &'static str,
    /// The URL without its password, for logs.
    pub display: String,
    /// Set once the migrations have run (by the writer or the first query).
    migrated: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

/// What a CDR query selects; every filter is optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Received at or after / before (Unix milliseconds).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub code: Option<i64>,
    pub end_reason: Option<String>,
    pub a_call_id: Option<String>,
    /// Only calls still open (true) or closed (false).
    pub open: Option<bool>,
    /// Newest first, at most this many (default 100, at most 10000).
    pub limit: Option<i64>,
}

/// The upsert, for `rows` records at once. It keeps the newest revision, and a closed record
/// over an open one, whatever order revisions arrive in. PostgreSQL numbers its parameters;
/// SQLite gets plain `?`: it looks each named parameter up in a list, so binding N of them
/// costs N squared (a third of SQLite's time at 16 rows of 36 columns).
fn insert_sql(rows: usize, numbered: bool) -> String {
    const COLUMNS: usize = 36;
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| match numbered {
                    true => format!("${}", row * COLUMNS + c),
                    false => "?".to_owned(),
                })
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO cdrs (id, rev, instance, boot, a_call_id, b_call_id, caller, callee, \
         source, received_ms, ringing_ms, answered_ms, ended_ms, duration_ms, final_code, final_reason, \
         hangup_side, end_reason, rule, tags, screening, screening_reason, attestation, a_codec, b_codec, \
         transcoded, a_packets, a_lost, a_jitter_us, b_packets, b_lost, b_jitter_us, conference, linked_id, origin, recording) \
         VALUES {} \
         ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, b_call_id = excluded.b_call_id, \
         ringing_ms = excluded.ringing_ms, answered_ms = excluded.answered_ms, ended_ms = excluded.ended_ms, \
         duration_ms = excluded.duration_ms, final_code = excluded.final_code, final_reason = excluded.final_reason, \
         hangup_side = excluded.hangup_side, end_reason = excluded.end_reason, rule = excluded.rule, \
         tags = excluded.tags, screening = excluded.screening, screening_reason = excluded.screening_reason, \
         attestation = excluded.attestation, a_codec = excluded.a_codec, b_codec = excluded.b_codec, \
         transcoded = excluded.transcoded, a_packets = excluded.a_packets, a_lost = excluded.a_lost, \
         a_jitter_us = excluded.a_jitter_us, b_packets = excluded.b_packets, b_lost = excluded.b_lost, \
         b_jitter_us = excluded.b_jitter_us, conference = excluded.conference, linked_id = excluded.linked_id, \
         recording = excluded.recording \
         WHERE cdrs.rev < excluded.rev AND (cdrs.end_reason IS NULL OR excluded.end_reason IS NOT NULL)",
        values.join(", ")
    )
}

/// A batch is stored in statements of these many rows, largest first. Few fixed sizes keep
/// every statement in each connection's prepared-statement cache (one sized to each batch
/// would be prepared anew every time; with numbered parameters an earlier try of that cost
/// SQLite 5x the CPU of one row per statement), while a statement per row costs a round
/// trip to the driver's thread each.
const CHUNKS: [usize; 3] = [16, 4, 1];

/// The statements for SQLite, then for PostgreSQL.
static INSERTS: std::sync::LazyLock<[[String; 3]; 2]> = std::sync::LazyLock::new(|| {
    [false, true].map(|numbered| CHUNKS.map(|rows| insert_sql(rows, numbered)))
});

/// One revision per record, the one the upsert would keep: a closed one over an open
/// one, then the highest. A call's start, answer and end often share a batch; storing
/// only its last saves the database two writes. PostgreSQL also refuses a statement that
/// touches one row twice.
fn newest_revisions(records: &[Record]) -> Vec<&Record> {
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    let mut kept: Vec<&Record> = Vec::with_capacity(records.len());
    let key = |r: &Record| (r.end_reason.is_some(), r.rev);
    for r in records {
        match at.get(r.id.as_str()) {
            Some(&i) if key(kept[i]) < key(r) => kept[i] = r,
            Some(_) => {}
            None => {
                at.insert(&r.id, kept.len());
                kept.push(r);
            }
        }
    }
    kept
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind one record's 36 columns, in the order `insert_sql` names them.
fn bind_record<'q>(query: AnyQuery<'q>, r: &'q Record) -> AnyQuery<'q> {
    query
        .bind(&r.id)
        .bind(r.rev)
        .bind(&r.instance)
        .bind(&r.boot)
        .bind(&r.a_call_id)
        .bind(&r.b_call_id)
        .bind(&r.caller)
        .bind(&r.callee)
        .bind(&r.source)
        .bind(r.received_ms)
        .bind(r.ringing_ms)
        .bind(r.answered_ms)
        .bind(r.ended_ms)
        .bind(r.duration_ms)
        .bind(r.final_code)
        .bind(&r.final_reason)
        .bind(&r.hangup_side)
        .bind(&r.end_reason)
        .bind(&r.rule)
        .bind(&r.tags)
        .bind(&r.screening)
        .bind(&r.screening_reason)
        .bind(&r.attestation)
        .bind(&r.a_codec)
        .bind(&r.b_codec)
        .bind(i64::from(r.transcoded))
        .bind(r.a_packets)
        .bind(r.a_lost)
        .bind(r.a_jitter_us)
        .bind(r.b_packets)
        .bind(r.b_lost)
        .bind(r.b_jitter_us)
        .bind(&r.conference)
        .bind(&r.linked_id)
        .bind(&r.origin)
        .bind(&r.recording)
}

impl Store {
    /// A store for `url` (`sqlite://PATH` or `postgres://...`); nothing is contacted yet.
    pub fn new(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            "sqlite"
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            "postgres"
        } else {
            anyhow::bail!("cdr.url {url:?}: expected sqlite://PATH or postgres://...");
        };
        let mut url = url.to_owned();
        if kind == "sqlite" {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if let Some(dir) = std::path::Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cdr database folder {}: {e}", dir.display()))?;
            }
            if !url.contains('?') {
                url.push_str("?mode=rwc"); // created on first run
            }
        }
        let sqlite = kind == "sqlite";
        let connect = |connections| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(3))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if sqlite {
                            // WAL: the API's queries read while the writer writes.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                        }
                        Ok(())
                    })
                })
                .connect_lazy(&url)
                .map_err(|e| anyhow::anyhow!("cdr.url: {e}"))
        };
        let (pool, writes) = match sqlite {
            true => (connect(2)?, connect(1)?),
            false => {
                let pool = connect(4)?;
                (pool.clone(), pool)
            }
        };
        Ok(Store {
            pool,
            writes,
            kind,
            display: redact(&url),
            migrated: Default::default(),
        })
    }

    /// Create or update the table, once (the writer and the first query both ask).
    pub async fn migrate(&self) -> sqlx::Result<()> {
        self.migrated
            .get_or_try_init(|| async { MIGRATOR.run(&self.writes).await })
            .await
            .map(|_| ())
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }

    /// Write records in one transaction, one revision per record (the one the upsert
    /// would keep); a version older than the stored one is ignored.
    pub async fn upsert(&self, records: &[Record]) -> sqlx::Result<()> {
        let mut tx = self.writes.begin().await?;
        let inserts = &INSERTS[usize::from(self.kind == "postgres")];
        let mut rest = &newest_revisions(records)[..];
        while !rest.is_empty() {
            let (size, sql) = CHUNKS
                .iter()
                .zip(inserts)
                .find(|(size, _)| **size <= rest.len())
                .map_or((1, inserts[2].as_str()), |(size, sql)| {
                    (*size, sql.as_str())
                });
            let (chunk, after) = rest.split_at(size);
            let mut query = sqlx::query(sql);
            for r in chunk {
                query = bind_record(query, r);
            }
            query.execute(&mut *tx).await?;
            rest = after;
        }
        tx.commit().await
    }

    /// Close the records an earlier run of this instance left open (it crashed): end reason
    /// `crash-recovered`, ended now, no duration (when the call really ended is unknown).
    pub async fn recover(&self, instance: &str, boot: &str, now_ms: i64) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE cdrs SET end_reason = 'crash-recovered', hangup_side = 'warden', \
             ended_ms = $1, rev = rev + 1 \
             WHERE instance = $2 AND boot <> $3 AND end_reason IS NULL",
        )
        .bind(now_ms)
        .bind(instance)
        .bind(boot)
        .execute(&self.writes)
        .await?;
        Ok(done.rows_affected())
    }

    /// Close the records a cluster node's run (`instance`, `boot`) left open when the node
    /// was lost: end reason `node-lost`; the records closed. Closed records stay closed
    /// (the upsert never reopens one), so a late replay of that run's journal cannot undo
    /// this, and a record is never closed twice.
    pub async fn close_lost(
        &self,
        instance: &str,
        boot: &str,
        now_ms: i64,
    ) -> sqlx::Result<Vec<Record>> {
        let rows = sqlx::query(
            "UPDATE cdrs SET end_reason = 'node-lost', hangup_side = 'warden', \
             ended_ms = $1, rev = rev + 1 \
             WHERE instance = $2 AND boot = $3 AND end_reason IS NULL RETURNING *",
        )
        .bind(now_ms)
        .bind(instance)
        .bind(boot)
        .fetch_all(&self.writes)
        .await?;
        rows.iter().map(record_of).collect()
    }

    /// The runs (instance, boot) other than `instance` with records still open.
    pub async fn open_runs(&self, instance: &str) -> sqlx::Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT instance, boot FROM cdrs WHERE end_reason IS NULL AND instance <> $1",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("instance")?, r.try_get("boot")?)))
            .collect()
    }

    /// Records matching `filter`, newest first.
    pub async fn query(&self, filter: &Filter) -> sqlx::Result<Vec<Record>> {
        self.migrate().await?;
        let mut sql = String::from("SELECT * FROM cdrs WHERE 1 = 1");
        let mut n = 0;
        let mut clause = |sql: &mut String, text: &str| {
            n += 1;
            sql.push_str(&text.replace('?', &format!("${n}")));
        };
        if filter.since_ms.is_some() {
            clause(&mut sql, " AND received_ms >= ?");
        }
        if filter.until_ms.is_some() {
            clause(&mut sql, " AND received_ms < ?");
        }
        if filter.caller.is_some() {
            clause(&mut sql, " AND caller = ?");
        }
        if filter.callee.is_some() {
            clause(&mut sql, " AND callee = ?");
        }
        if filter.code.is_some() {
            clause(&mut sql, " AND final_code = ?");
        }
        if filter.end_reason.is_some() {
            clause(&mut sql, " AND end_reason = ?");
        }
        if filter.a_call_id.is_some() {
            clause(&mut sql, " AND a_call_id = ?");
        }
        match filter.open {
            Some(true) => sql.push_str(" AND end_reason IS NULL"),
            Some(false) => sql.push_str(" AND end_reason IS NOT NULL"),
            None => {}
        }
        let limit = filter.limit.unwrap_or(100).clamp(1, 10_000);
        sql.push_str(&format!(" ORDER BY received_ms DESC, id LIMIT {limit}"));
        let mut q = sqlx::query(&sql);
        if let Some(v) = filter.since_ms {
            q = q.bind(v);
        }
        if let Some(v) = filter.until_ms {
            q = q.bind(v);
        }
        for v in [&filter.caller, &filter.callee].into_iter().flatten() {
            q = q.bind(v.clone());
        }
        if let Some(v) = filter.code {
            q = q.bind(v);
        }
        for v in [&filter.end_reason, &filter.a_call_id]
            .into_iter()
            .flatten()
        {
            q = q.bind(v.clone());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    /// Records received in `[since_ms, until_ms)` after `after` (received_ms, id), oldest
    /// first, at most `limit`: one page of an export (keyset paging, so a long export
    /// neither skips nor repeats records as new ones arrive).
    pub async fn export_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> sqlx::Result<Vec<Record>> {
        self.migrate().await?;
        let (after_ms, after_id) = after.unwrap_or((since_ms - 1, String::new()));
        let rows = sqlx::query(
            "SELECT * FROM cdrs WHERE received_ms >= $1 AND received_ms < $2 \
             AND (received_ms > $3 OR (received_ms = $3 AND id > $4)) \
             ORDER BY received_ms, id LIMIT $5",
        )
        .bind(since_ms)
        .bind(until_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_of).collect()
    }

    /// Delete up to `batch` closed records received before `before_ms` (the retention
    /// term); how many went. Open calls are never purged, however old.
    pub async fn purge(&self, before_ms: i64, batch: i64) -> sqlx::Result<u64> {
        self.migrate().await?;
        let done = sqlx::query(
            "DELETE FROM cdrs WHERE id IN (SELECT id FROM cdrs \
             WHERE received_ms < $1 AND end_reason IS NOT NULL LIMIT $2)",
        )
        .bind(before_ms)
        .bind(batch)
        .execute(&self.writes)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writes.close().await;
    }

    /// The pool, migrated, for the other tables a cluster keeps in this database (its
    /// users).
    pub async fn migrated_pool(&self) -> sqlx::Result<&AnyPool> {
        self.migrate().await?;
        Ok(&self.pool)
    }
}

/// Purge records older than `days` now, then every hour, for as long as Warden runs.
pub async fn retain(store: Store, days: u64) {
    let term_ms = (days * 86_400_000) as i64;
    loop {
        let before = crate::clock::unix_now_ms() as i64 - term_ms;
        let mut purged = 0;
        loop {
            match store.purge(before, 10_000).await {
                Ok(n) => {
                    purged += n;
                    if n < 10_000 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot purge old call records; trying again in an hour");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(
                records = purged,
                retention_days = days,
                "purged call records past cdr.retention_days"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

fn record_of(row: &AnyRow) -> sqlx::Result<Record> {
    Ok(Record {
        id: row.try_get("id")?,
        rev: row.try_get("rev")?,
        instance: row.try_get("instance")?,
        boot: row.try_get("boot")?,
        a_call_id: row.try_get("a_call_id")?,
        b_call_id: row.try_get("b_call_id")?,
        caller: row.try_get("caller")?,
        callee: row.try_get("callee")?,
        source: row.try_get("source")?,
        received_ms: row.try_get("received_ms")?,
        ringing_ms: row.try_get("ringing_ms")?,
        answered_ms: row.try_get("answered_ms")?,
        ended_ms: row.try_get("ended_ms")?,
        duration_ms: row.try_get("duration_ms")?,
        final_code: row.try_get("final_code")?,
        final_reason: row.try_get("final_reason")?,
        hangup_side: row.try_get("hangup_side")?,
        end_reason: row.try_get("end_reason")?,
        rule: row.try_get("rule")?,
        tags: row.try_get("tags")?,
        screening: row.try_get("screening")?,
        screening_reason: row.try_get("screening_reason")?,
        attestation: row.try_get("attestation")?,
        a_codec: row.try_get("a_codec")?,
        b_codec: row.try_get("b_codec")?,
        transcoded: row.try_get::<i64, _>("transcoded")? != 0,
        a_packets: row.try_get("a_packets")?,
        a_lost: row.try_get("a_lost")?,
        a_jitter_us: row.try_get("a_jitter_us")?,
        b_packets: row.try_get("b_packets")?,
        b_lost: row.try_get("b_lost")?,
        b_jitter_us: row.try_get("b_jitter_us")?,
        conference: row.try_get("conference")?,
        linked_id: row.try_get("linked_id")?,
        origin: row.try_get("origin")?,
        recording: row.try_get("recording")?,
    })
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, rev: i64, end: Option<&str>) -> Record {
        Record {
            id: id.into(),
            rev,
            instance: "here".into(),
            boot: "old".into(),
            caller: "alice".into(),
            received_ms: 1000,
            final_code: end.map(|_| 200),
            end_reason: end.map(str::to_owned),
            transcoded: rev % 2 == 0,
            ..Record::default()
        }
    }

    #[test]
    fn a_batch_keeps_one_revision_per_record_closed_over_open_then_highest() {
        let batch = [
            record("a", 1, None),
            record("b", 1, None),
            record("a", 3, None),
            record("a", 2, Some("normal")),
            record("c", 1, None),
            record("b", 2, None),
        ];
        let kept: Vec<(&str, i64)> = newest_revisions(&batch)
            .iter()
            .map(|r| (r.id.as_str(), r.rev))
            .collect();
        assert_eq!(kept, [("a", 2), ("b", 2), ("c", 1)]);
    }

    #[tokio::test]
    async fn upserts_are_idempotent_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("d/cdr.sqlite").display());
        let store = Store::new(&url).unwrap();
        store.migrate().await.unwrap();
        let open = record("x", 1, None);
        let closed = record("x", 2, Some("normal"));
        store.upsert(&[open.clone(), closed.clone()]).await.unwrap();
        // A journal replayed again, in any order: still one row, the newest.
        store.upsert(&[closed.clone(), open.clone()]).await.unwrap();
        let rows = store.query(&Filter::default()).await.unwrap();
        assert_eq!(rows, vec![closed]);
        // Crash recovery closes open records of earlier runs only.
        let mut earlier = record("y", 1, None);
        earlier.received_ms = 5;
        let mut current = record("z", 1, None);
        current.boot = "now".into();
        store.upsert(&[earlier, current]).await.unwrap();
        assert_eq!(store.recover("here", "now", 9).await.unwrap(), 1);
        let open = Filter {
            open: Some(true),
            ..Filter::default()
        };
        let still_open = store.query(&open).await.unwrap();
        assert_eq!(still_open.len(), 1);
        assert_eq!(still_open[0].id, "z");
        let y = Filter {
            end_reason: Some("crash-recovered".into()),
            caller: Some("alice".into()),
            ..Filter::default()
        };
        assert_eq!(store.query(&y).await.unwrap()[0].ended_ms, Some(9));
    }

    #[tokio::test]
    async fn a_batch_of_any_size_is_stored_row_for_row() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cdr.sqlite").display());
        let store = Store::new(&url).unwrap();
        store.migrate().await.unwrap();
        // 37 = 16 + 16 + 4 + 1: every statement size, each row in the right columns.
        let opened: Vec<Record> = (0..37)
            .map(|i| record(&format!("r{i:02}"), 1, None))
            .collect();
        store.upsert(&opened).await.unwrap();
        let mut closed: Vec<Record> = (0..37)
            .map(|i| {
                let mut r = record(&format!("r{i:02}"), 2, Some("normal"));
                r.duration_ms = Some(i);
                r
            })
            .collect();
        // A revision that lost the race changes nothing.
        closed.extend(opened.iter().take(5).cloned());
        store.upsert(&closed).await.unwrap();
        let mut rows = store.query(&Filter::default()).await.unwrap();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(rows, closed[..37].to_vec());
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://warden:s3cret@db:5432/cdr"),
            "postgres://warden:***@db:5432/cdr"
        );
        assert_eq!(
            redact("sqlite://data/cdr.sqlite"),
            "sqlite://data/cdr.sqlite"
        );
    }
}
