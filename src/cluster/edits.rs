//! Edits shared by the cluster: operator list entries added or removed, users reset, the
//! guard's bans and their lifting; each takes effect on every node within a second.
//!
//! Redis keeps the operator's list entries (`warden:lists`, one field per entry) and the
//! live bans (`warden:bans`, one field per source) as the cluster's truth, and a channel
//! announces each edit. At each (re)connection a node makes its lists match Redis's (a
//! Redis that holds no lists yet, first start or restarted empty, is seeded from the
//! node's own) and takes on the bans.

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
const BANS: &str = "warden:bans";
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

/// A guard ban, as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub source: String,
    pub reason: String,
    /// When it ends (Unix milliseconds).
    pub until_ms: u64,
}

impl Ban {
    /// A ban this node's guard imposed, to share.
    pub fn of(imposed: &crate::guard::Imposed, now_ms: u64) -> Ban {
        Ban {
            source: imposed.source.to_string(),
            reason: imposed.reason.as_str().to_owned(),
            until_ms: now_ms + imposed.duration.as_millis() as u64,
        }
    }

    /// The ban for this node's guard; None once over or unreadable.
    pub fn imposed(&self, now_ms: u64) -> Option<crate::guard::Imposed> {
        Some(crate::guard::Imposed {
            source: self.source.parse().ok()?,
            reason: crate::guard::BanReason::parse(&self.reason)?,
            duration: Duration::from_millis(self.until_ms.checked_sub(now_ms)?),
        })
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
    /// `warden user add|remove` changed the users in the cluster's database: read them
    /// again.
    Users,
    /// A node's guard banned a source; an operator lifted a ban.
    Ban(Ban),
    Unban {
        source: String,
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

    /// The screening command that applies this edit on a node (none for `Users`).
    pub fn command(self) -> Option<Command> {
        Some(match self {
            Edit::Add(e) => Command::Add {
                list: e.list,
                kind: e.kind,
                value: e.value,
                note: e.note,
            },
            Edit::RemoveEntry { list, kind, value } => Command::RemoveEntry { list, kind, value },
            Edit::Reset { user } => Command::Reset { user },
            Edit::RemoveUser { user } => Command::Remove { user },
            Edit::Users | Edit::Ban(_) | Edit::Unban { .. } => return None,
        })
    }
}

/// What the loop hears.
#[derive(Debug)]
pub enum Event {
    /// (Re)connected and Redis holds the cluster's lists: make this node's match them.
    Lists(Vec<Entry>),
    /// (Re)connected to a Redis without lists: seed it with this node's.
    Seed,
    /// Another node's operator (or guard) edited.
    Edited(Edit),
    /// (Re)connected: the bans in force across the cluster.
    Bans(Vec<Ban>),
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

/// Announce that `warden user` changed the cluster's users (from the command line, with a
/// connection of its own).
pub async fn announce_users_changed(redis_url: &str) -> Result<(), String> {
    let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let announcement = Announcement {
        node: "warden user".into(),
        edit: Edit::Users,
    };
    let message = serde_json::to_string(&announcement).map_err(|e| e.to_string())?;
    let publish = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::AsyncCommands::publish::<_, _, i64>(&mut conn, CHANNEL, message).await
    };
    match tokio::time::timeout(Duration::from_secs(2), publish).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
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
                Edit::Users => {}
                Edit::Ban(ban) => {
                    let json = serde_json::to_string(ban).unwrap_or_default();
                    pipe.hset(BANS, &ban.source, json).ignore();
                }
                Edit::Unban { source } => {
                    pipe.hdel(BANS, source).ignore();
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
                    match bans(&redis).await {
                        Ok(bans) => {
                            let _ = events.send(Event::Bans(bans));
                        }
                        Err(e) => redis.failed("bans", &e),
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

/// The bans in force; the ended ones are removed as they are read.
async fn bans(redis: &Redis) -> Result<Vec<Ban>, String> {
    let mut conn = redis.connection().ok_or("not connected")?;
    let fields: Vec<(String, String)> = redis::AsyncCommands::hgetall(&mut conn, BANS)
        .await
        .map_err(|e| e.to_string())?;
    let now_ms = crate::clock::unix_now_ms();
    let (live, ended): (Vec<Ban>, Vec<Ban>) = fields
        .into_iter()
        .filter_map(|(_, json)| serde_json::from_str::<Ban>(&json).ok())
        .partition(|b| b.until_ms > now_ms);
    if !ended.is_empty() {
        let sources: Vec<&str> = ended.iter().map(|b| b.source.as_str()).collect();
        let _: Result<i64, _> = redis::AsyncCommands::hdel(&mut conn, BANS, sources).await;
    }
    Ok(live)
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
        assert!(matches!(back.command(), Some(Command::Add { value, .. }) if value == "882"));
        assert!(Edit::Users.command().is_none());
        assert!(Edit::of(&Command::Lists).is_none());
        assert!(Edit::of(&Command::Stats).is_none());
    }
}
