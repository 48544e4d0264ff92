//! Which nodes are alive, and what happens to the call records of one that is not: each
//! node holds a lease in Redis naming its run; a node whose lease lapsed has its open
//! records closed (`node-lost`) in the shared PostgreSQL by whichever survivor sees it first.
//!
//! Only a lease Redis itself says is gone counts: while this node cannot read Redis it
//! closes nothing, so a Redis outage never closes live calls' records.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Redis;
use crate::cdr::Record;
use crate::cdr::store::Store;

fn lease_key(node: &str) -> String {
    format!("warden:node:{node}")
}

/// Hold this node's lease (renewed every third of it) and, every lease, close the open
/// records of runs whose node holds no lease for them.
pub async fn watch(
    redis: Arc<Redis>,
    node: String,
    boot: String,
    lease: Duration,
    cdrs: Store,
    billing: mpsc::UnboundedSender<Vec<Record>>,
) {
    let mut tick = tokio::time::interval(lease / 3);
    // Lease renewals that worked in a row: leases are only judged after a whole lease of
    // them, so every living node has renewed its own since Redis last failed us (or came
    // back empty).
    let mut renewed_in_a_row: u64 = 0;
    loop {
        tick.tick().await;
        let Some(mut conn) = redis.connection() else {
            renewed_in_a_row = 0;
            continue;
        };
        let renewed = async {
            redis::cmd("SET")
                .arg(lease_key(&node))
                .arg(&boot)
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query_async::<()>(&mut conn)
                .await
        };
        if redis
            .timed("node lease", redis.timeout(), renewed)
            .await
            .is_err()
        {
            renewed_in_a_row = 0;
            continue;
        }
        renewed_in_a_row += 1;
        if renewed_in_a_row < 4 || renewed_in_a_row % 3 != 1 {
            continue;
        }
        let runs = match cdrs.open_runs(&node).await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: open records not read");
                continue;
            }
        };
        for (instance, run) in runs {
            let holder = async {
                redis::cmd("GET")
                    .arg(lease_key(&instance))
                    .query_async::<Option<String>>(&mut conn)
                    .await
            };
            let Ok(holder) = redis.timed("node lease", redis.timeout(), holder).await else {
                break; // Redis unsure: close nothing this turn.
            };
            if holder.as_deref() == Some(run.as_str()) {
                continue;
            }
            let now_ms = crate::clock::unix_now_ms() as i64;
            match cdrs.close_lost(&instance, &run, now_ms).await {
                Ok(closed) if closed.is_empty() => {}
                Ok(closed) => {
                    tracing::warn!(
                        node = %instance,
                        run = %run,
                        records = closed.len(),
                        "cluster: closed the call records of a node that is gone (end reason node-lost)"
                    );
                    let _ = billing.send(closed);
                }
                Err(e) => tracing::warn!(error = %e, "cluster: cannot close a lost node's records"),
            }
        }
    }
}
