//! Operator edits of the screening state shared by the cluster: list entries added or
//! removed and users reset on any node take effect on every node within a second.
//!
//! Redis keeps the operator's list entries (`warden:lists`, one field per entry) as the
//! cluster's truth and a channel announces each edit. At each (re)connection a node makes
//! its lists match Redis's; a Redis that holds no lists yet (first start, or restarted
//! empty) is seeded from the node's own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Redis;
use super::usage::user_keys;
use crate::screening::admin::Command;
use crate::screening::lists::{EntryKind, ListEntry};

const CHANNEL: &str = "warden:screening";
const LISTS: &str = "warden:lists";
/// Set once Redis holds the cluster's lists (even an empty set of them).
const SEEDED: &str = "warden:lists:seeded";

/// One operator list entry, as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub list: String,
    pub kind: String,
    pub value: String,
    pub note: String,
}

impl Entry {
    pub fn of(e: &ListEntry) -> Entry {
        Entry {
            list: e.list.as_str().to_owned(),
            kind: e.kind.as_str().to_owned(),
            value: e.value.clone(),
            note: e.note.clone(),
        }
    }

    fn field(&self) -> String {
        format!("{} {} {}", self.list, self.kind, self.value)
    }
}

/// An edit announced on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    node: String,
    edit: Edit,
}

/// The edits that change shared state (reading commands are not shared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Edit {
    Add(Entry),
    RemoveEntry {
        list: String,
        kind: String,
        value: String,
    },
    /// A user's counters cleared (`reset`), or everything about the user (`remove`).
    Reset {
        user: String,
    },
    RemoveUser {
        user: String,
    },
}

impl Edit {
    /// The edit an operator command makes, if it makes one (with the value written the
    /// way the lists keep it, so every node names an entry alike).
    pub fn of(command: &Command) -> Option<Edit> {
        let normal = |kind: &str, value: &str| {
            EntryKind::parse(kind)
                .and_then(|k| k.normalize(value).ok())
                .unwrap_or_else(|| value.to_owned())
        };
        Some(match command {
            Command::Add {
                list,
                kind,
                value,
                note,
            } => Edit::Add(Entry {
                list: list.to_ascii_lowercase(),
                kind: kind.to_ascii_lowercase(),
                value: normal(kind, value),
                note: note.clone(),
            }),
            Command::RemoveEntry { list, kind, value } => Edit::RemoveEntry {
                list: list.to_ascii_lowercase(),
                kind: kind.to_ascii_lowercase(),
                value: normal(kind, value),
            },
            Command::Reset { user } => Edit::Reset { user: user.clone() },
            Command::Remove { user } => Edit::RemoveUser { user: user.clone() },
            Command::Stats | Command::Users | Command::Lists => return None,
        })
    }

    /// The command that applies this edit on a node.
    pub fn command(self) -> Command {
        match self {
            Edit::Add(e) => Command::Add {
                list: e.list,
                kind: e.kind,
                value: e.value,
                note: e.note,
            },
            Edit::RemoveEntry { list, kind, value } => Command::RemoveEntry { list, kind, value },
            Edit::Reset { user } => Command::Reset { user },
            Edit::RemoveUser { user } => Command::Remove { user },
        }
    }
}

/// What the loop hears.
#[derive(Debug)]
pub enum Event {
    /// (Re)connected and Redis holds the cluster's lists: make this node's match them.
    Lists(Vec<Entry>),
    /// (Re)connected to a Redis without lists: seed it with this node's.
    Seed,
    /// Another node's operator edited.
    Edited(Edit),
}

/// This node's side of the shared edits.
pub struct Edits {
    queued: mpsc::UnboundedSender<Vec<Edit>>,
}

impl Edits {
    pub fn start(redis: Arc<Redis>, node: String) -> (Edits, mpsc::UnboundedReceiver<Event>) {
        let (queued, queue) = mpsc::unbounded_channel();
        let (events, heard) = mpsc::unbounded_channel();
        tokio::spawn(announce(redis.clone(), node.clone(), queue));
        tokio::spawn(listen(redis, node, events));
        (Edits { queued }, heard)
    }

    /// An edit this node's operator made: to Redis and every other node.
    pub fn share(&self, edit: Edit) {
        let _ = self.queued.send(vec![edit]);
    }

    /// Seed an empty Redis with this node's operator entries.
    pub fn seed(&self, entries: Vec<Entry>) {
        let _ = self
            .queued
            .send(entries.into_iter().map(Edit::Add).collect());
    }
}

/// Apply each batch of edits to Redis and announce it, in order, retrying until Redis
/// takes it.
async fn announce(redis: Arc<Redis>, node: String, mut queue: mpsc::UnboundedReceiver<Vec<Edit>>) {
    while let Some(batch) = queue.recv().await {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for edit in &batch {
            match edit {
                Edit::Add(e) => {
                    let json = serde_json::to_string(e).unwrap_or_default();
                    pipe.hset(LISTS, e.field(), json).ignore();
                }
                Edit::RemoveEntry { list, kind, value } => {
                    pipe.hdel(LISTS, format!("{list} {kind} {value}")).ignore();
                }
                Edit::Reset { user } => {
                    pipe.del(&user_keys(user)[0]).ignore();
                }
                Edit::RemoveUser { user } => {
                    pipe.del(&user_keys(user)[..]).ignore();
                }
            }
            let announcement = Announcement {
                node: node.clone(),
                edit: edit.clone(),
            };
            let message = serde_json::to_string(&announcement).unwrap_or_default();
            pipe.publish(CHANNEL, message).ignore();
        }
        pipe.set(SEEDED, 1).ignore();
        redis.deliver("screening edit", &pipe).await;
    }
}

async fn listen(redis: Arc<Redis>, node: String, events: mpsc::UnboundedSender<Event>) {
    loop {
        match redis.client().get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(CHANNEL).await {
                    redis.failed("subscribe", &e);
                } else {
                    match lists(&redis).await {
                        Ok(Some(entries)) => {
                            let _ = events.send(Event::Lists(entries));
                        }
                        Ok(None) => {
                            let _ = events.send(Event::Seed);
                        }
                        Err(e) => redis.failed("screening lists", &e),
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(text) = message.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Announcement>(&text) {
                            Ok(a) if a.node != node => {
                                let _ = events.send(Event::Edited(a.edit));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "cluster: unreadable screening edit")
                            }
                        }
                    }
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

/// The cluster's operator entries; None when Redis holds none yet (never seeded).
async fn lists(redis: &Redis) -> Result<Option<Vec<Entry>>, String> {
    let mut conn = redis.connection().ok_or("not connected")?;
    let seeded: bool = redis::AsyncCommands::exists(&mut conn, SEEDED)
        .await
        .map_err(|e| e.to_string())?;
    if !seeded {
        return Ok(None);
    }
    let fields: Vec<(String, String)> = redis::AsyncCommands::hgetall(&mut conn, LISTS)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(
        fields
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_round_trip_to_commands_and_reads_are_not_shared() {
        let add = Command::Add {
            list: "block".into(),
            kind: "prefix".into(),
            value: "+882".into(),
            note: "IRSF".into(),
        };
        let edit = Edit::of(&add).expect("an edit");
        let text = serde_json::to_string(&edit).unwrap();
        let back: Edit = serde_json::from_str(&text).unwrap();
        // Written as the lists keep it, so every node names the entry alike.
        assert!(matches!(back.command(), Command::Add { value, .. } if value == "882"));
        assert!(Edit::of(&Command::Lists).is_none());
        assert!(Edit::of(&Command::Stats).is_none());
    }
}
