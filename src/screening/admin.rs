//! Operator commands on the screening state (tfpsctl parity: list, remove, reset users; list,
//! add, remove list entries), answered as JSON for the admin API and `warden ctl`.

use serde_json::{Value, json};

use super::Engine;
use super::lists::{EntryKind, ListName};

#[derive(Debug, Clone)]
pub enum Command {
    /// Decisions since start, by outcome and deciding check.
    Stats,
    Users,
    Reset {
        user: String,
    },
    Remove {
        user: String,
    },
    Lists,
    Add {
        list: String,
        kind: String,
        value: String,
        note: String,
    },
    RemoveEntry {
        list: String,
        kind: String,
        value: String,
    },
}

fn list_and_kind(list: &str, kind: &str) -> Result<(ListName, EntryKind), String> {
    let l =
        ListName::parse(list).ok_or_else(|| format!("list {list:?}: expected allow or block"))?;
    let k = EntryKind::parse(kind)
        .ok_or_else(|| format!("kind {kind:?}: expected number, prefix, country or source"))?;
    Ok((l, k))
}

/// Run `command` at `now` (unix seconds). Errors starting "not found" mean nothing matched.
pub fn run(engine: &mut Engine, command: Command, now: u64) -> Result<Value, String> {
    match command {
        Command::Stats => Ok(Value::Array(
            engine
                .counts
                .iter()
                .map(|((decision, check), n)| json!({"decision": decision, "check": check, "count": n}))
                .collect(),
        )),
        Command::Users => {
            let mut users: Vec<Value> = engine
                .usage()
                .users()
                .map(|(user, u)| {
                    let f = engine.usage().figures(user, now, 600);
                    let mut countries: Vec<&String> = u.countries.iter().collect();
                    countries.sort();
                    let mut sources: Vec<&String> = u.sources.iter().collect();
                    sources.sort();
                    json!({
                        "user": user,
                        "calls_last_hour": f.calls_last_hour,
                        "calls_last_day": f.calls_last_day,
                        "international_last_day": f.international_last_day,
                        "minutes_last_day": f.seconds_last_day / 60,
                        "live_calls": f.live_calls,
                        "countries": countries,
                        "sources": sources,
                        "allowed": engine.lists().user_allow_list(user),
                    })
                })
                .collect();
            users.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
            Ok(Value::Array(users))
        }
        Command::Reset { user } => match engine.reset_user(&user) {
            true => Ok(json!({"reset": user})),
            false => Err(format!("not found: no counters for {user}")),
        },
        Command::Remove { user } => match engine.remove_user(&user) {
            true => Ok(json!({"removed": user})),
            false => Err(format!("not found: nothing known about {user}")),
        },
        Command::Lists => Ok(Value::Array(
            engine
                .lists()
                .entries()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect(),
        )),
        Command::Add {
            list,
            kind,
            value,
            note,
        } => {
            let (l, k) = list_and_kind(&list, &kind)?;
            let entry = engine.add_entry(l, k, &value, &note, now)?;
            serde_json::to_value(entry).map_err(|e| e.to_string())
        }
        Command::RemoveEntry { list, kind, value } => {
            let (l, k) = list_and_kind(&list, &kind)?;
            match engine.remove_entry(l, k, &value)? {
                true => Ok(json!({"removed": format!("{list} {kind} {value}")})),
                false => Err(format!(
                    "not found: {list} {kind} {value} is not on the list"
                )),
            }
        }
    }
}
