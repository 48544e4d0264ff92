//! Registrations shared by the cluster's nodes: each node writes the bindings its
//! REGISTERs make to Redis and announces them on a channel; every node keeps a copy of
//! the others' bindings, read whole at each (re)connection and kept current by the channel.
//!
//! Redis holds one hash per address of record (`warden:reg:{aor}`, contact -> binding);
//! the registrar stays the one place lookups go, so a call never waits on Redis.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Redis;
use crate::registrar::{Binding, Change};
use crate::sip::transport::Transport;

/// The channel every node announces its registration changes on.
const CHANNEL: &str = "warden:registrations";

/// What the loop hears from the cluster.
#[derive(Debug)]
pub enum Event {
    /// (Re)connected: announce this node's own bindings again (Redis may have restarted
    /// empty); a `Snapshot` follows.
    Connected,
    /// Every binding the other nodes hold now.
    Snapshot(Vec<Binding>),
    /// Another node's REGISTER changed a binding.
    Changed { node: String, change: Change },
}

/// A binding as Redis keeps it and the channel carries it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    aor: String,
    contact: String,
    expires_at: u64,
    call_id: String,
    cseq: u32,
    transport: String,
    source: String,
    user_agent: Option<String>,
    path: Vec<String>,
    node: String,
}

impl Stored {
    fn new(b: &Binding, node: &str) -> Stored {
        Stored {
            aor: b.aor.clone(),
            contact: b.contact.clone(),
            expires_at: b.expires_at,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            transport: b.transport.as_str().to_owned(),
            source: b.source.to_string(),
            user_agent: b.user_agent.clone(),
            path: b.path.clone(),
            node: node.to_owned(),
        }
    }

    fn binding(self) -> Option<Binding> {
        Some(Binding {
            transport: Transport::parse(&self.transport)?,
            source: self.source.parse().ok()?,
            aor: self.aor,
            contact: self.contact,
            expires_at: self.expires_at,
            call_id: self.call_id,
            cseq: self.cseq,
            user_agent: self.user_agent,
            path: self.path,
            node: Some(self.node),
        })
    }
}

/// A change announced on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    upsert: Option<Stored>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remove: Option<(String, String)>,
}

fn key(aor: &str) -> String {
    format!("warden:reg:{{{aor}}}")
}

/// This node's side: changes to announce, in order.
pub struct Registrations {
    changes: mpsc::UnboundedSender<Change>,
}

impl Registrations {
    /// Start the announcer and the listener. `keep_s`: how long Redis keeps an address of
    /// record's hash after its last change (the longest registration allowed).
    pub fn start(
        redis: Arc<Redis>,
        client: redis::Client,
        node: String,
        keep_s: u64,
    ) -> (Registrations, mpsc::UnboundedReceiver<Event>) {
        let (changes, queued) = mpsc::unbounded_channel();
        let (events, heard) = mpsc::unbounded_channel();
        tokio::spawn(announce(redis.clone(), node.clone(), keep_s, queued));
        tokio::spawn(listen(redis, client, node, events));
        (Registrations { changes }, heard)
    }

    /// A change this node's registrar made: to Redis and the other nodes.
    pub fn share(&self, change: Change) {
        let _ = self.changes.send(change);
    }
}

/// Write each change and announce it, in order; a change Redis refuses is retried (with
/// backoff) so none is skipped.
async fn announce(
    redis: Arc<Redis>,
    node: String,
    keep_s: u64,
    mut queued: mpsc::UnboundedReceiver<Change>,
) {
    while let Some(change) = queued.recv().await {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let announcement = match &change {
            Change::Upsert(b) => {
                let stored = Stored::new(b, &node);
                let json = serde_json::to_string(&stored).unwrap_or_default();
                pipe.hset(key(&b.aor), &b.contact, json)
                    .ignore()
                    .expire(key(&b.aor), keep_s as i64)
                    .ignore();
                Announcement {
                    node: node.clone(),
                    upsert: Some(stored),
                    remove: None,
                }
            }
            Change::Remove { aor, contact } => {
                pipe.hdel(key(aor), contact).ignore();
                Announcement {
                    node: node.clone(),
                    upsert: None,
                    remove: Some((aor.clone(), contact.clone())),
                }
            }
        };
        let message = serde_json::to_string(&announcement).unwrap_or_default();
        pipe.publish(CHANNEL, message).ignore();
        redis.deliver("registration", &pipe).await;
    }
}

/// Subscribe to the channel; at each (re)connection read every other node's bindings.
async fn listen(
    redis: Arc<Redis>,
    client: redis::Client,
    node: String,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(CHANNEL).await {
                    redis.failed("subscribe", &e);
                } else {
                    let _ = events.send(Event::Connected);
                    match snapshot(&redis, &node).await {
                        Ok(bindings) => {
                            let _ = events.send(Event::Snapshot(bindings));
                        }
                        Err(e) => redis.failed("registrations snapshot", &e),
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(text) = message.get_payload::<String>() else {
                            continue;
                        };
                        if let Some(event) = heard(&text, &node) {
                            let _ = events.send(event);
                        }
                    }
                    // The stream ended: the connection is gone.
                    redis.failed("subscription", &"connection lost");
                }
            }
            Err(e) => redis.failed("subscribe", &e),
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An announcement from another node as an event (this node's own are ignored).
fn heard(text: &str, own: &str) -> Option<Event> {
    let a: Announcement = match serde_json::from_str(text) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: unreadable registration announcement");
            return None;
        }
    };
    if a.node == own {
        return None;
    }
    let change = match (a.upsert, a.remove) {
        (Some(stored), _) => Change::Upsert(stored.binding()?),
        (None, Some((aor, contact))) => Change::Remove { aor, contact },
        (None, None) => return None,
    };
    Some(Event::Changed {
        node: a.node,
        change,
    })
}

/// Every unexpired binding Redis holds for other nodes.
async fn snapshot(redis: &Redis, own: &str) -> Result<Vec<Binding>, String> {
    let mut conn = redis.connection().ok_or("not connected")?;
    let now = crate::clock::unix_now();
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter = redis::AsyncCommands::scan_match::<_, String>(&mut conn, "warden:reg:*")
            .await
            .map_err(|e| e.to_string())?;
        while let Some(k) = iter.next_item().await {
            keys.push(k);
        }
    }
    let mut out = Vec::new();
    for k in keys {
        let fields: Vec<(String, String)> = redis::AsyncCommands::hgetall(&mut conn, &k)
            .await
            .map_err(|e| e.to_string())?;
        for (_, json) in fields {
            let Ok(stored) = serde_json::from_str::<Stored>(&json) else {
                continue;
            };
            if stored.node != own
                && stored.expires_at > now
                && let Some(b) = stored.binding()
            {
                out.push(b);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            aor: "alice".into(),
            contact: "sip:alice@192.0.2.5:5060".into(),
            expires_at: 2_000_000_000,
            call_id: "c1".into(),
            cseq: 3,
            transport: Transport::Tcp,
            source: "192.0.2.5:40000".parse().unwrap(),
            user_agent: Some("Phone".into()),
            path: vec!["<sip:10.0.0.1:5060;lr>".into()],
            node: None,
        }
    }

    #[test]
    fn another_nodes_announcements_become_its_bindings_and_ours_are_ignored() {
        let a = Announcement {
            node: "a".into(),
            upsert: Some(Stored::new(&binding(), "a")),
            remove: None,
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(heard(&text, "a").is_none(), "our own");
        match heard(&text, "b") {
            Some(Event::Changed {
                node,
                change: Change::Upsert(b),
            }) => {
                assert_eq!(node, "a");
                assert_eq!(b.node.as_deref(), Some("a"));
                assert_eq!((b.transport, &b.path), (Transport::Tcp, &binding().path));
            }
            other => panic!("{other:?}"),
        }
        let r = r#"{"node":"a","remove":["alice","sip:alice@192.0.2.5:5060"]}"#;
        assert!(matches!(
            heard(r, "b"),
            Some(Event::Changed {
                change: Change::Remove { .. },
                ..
            })
        ));
        assert!(heard("{nonsense", "b").is_none());
    }
}
