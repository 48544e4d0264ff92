//! `warden ctl`: the admin API from a terminal. Each command is one HTTP request to the
//! running server (address and token from the config), its JSON answer printed as a table.

use clap::Subcommand;
use serde_json::Value;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// The live calls: number, state, caller, callee, age.
    Calls,
    /// End a live call (its number from `calls`): BYE to both parties.
    Hangup { call: u64 },
    /// Place a call: ring TO (a user or a SIP URI) and, when it answers, dial NUMBER
    /// through the dialplan (or bridge, play or join a room instead).
    Originate(OriginateArgs),
    /// Play a prompt to a live call's caller, callee or both.
    Play {
        call: u64,
        prompt: String,
        /// caller, callee or both.
        #[arg(long, default_value = "both")]
        to: String,
    },
    /// Send keys (0-9, *, #, A-D) to a party of a live call as RFC 4733 events.
    Dtmf {
        call: u64,
        digits: String,
        /// caller or callee.
        #[arg(long, default_value = "callee")]
        to: String,
    },
    /// Blind transfer: TARGET takes the callee's (or, with --replace caller, the caller's) place.
    Transfer {
        call: u64,
        target: String,
        #[arg(long, default_value = "callee")]
        replace: String,
    },
    /// Record a live call (stereo: caller left, callee right; or mono), uploaded when it
    /// ends.
    Record {
        call: u64,
        /// stereo or mono (default: `recording.layout`).
        #[arg(long)]
        layout: Option<String>,
        /// wav or opus (default: `recording.format`).
        #[arg(long)]
        format: Option<String>,
    },
    /// Stop a live call's recording: the file is completed and uploaded.
    StopRecording { call: u64 },
    /// Registered contacts.
    Registrations,
    /// Gateways probed with OPTIONS (`probe = true` bridges): up or down, failures.
    Gateways,
    /// Sources the guard has banned (flooding, failed authentication, scanners).
    Bans,
    /// Lift a source's ban.
    Unban { source: std::net::IpAddr },
    /// Call detail records, newest first.
    Cdr(CdrArgs),
    /// Reload the dialplan (refused, with file and line, when it has a mistake).
    Reload,
    /// Screening state: users' counters, and the allow/block lists.
    #[command(subcommand)]
    Screening(Screening),
}

/// `warden ctl originate`: whom to ring, and what follows the answer.
#[derive(Debug, clap::Args)]
pub struct OriginateArgs {
    /// The party rung first: a registered user (`alice`) or a SIP URI with an address.
    pub to: String,
    /// The number the answered party is connected to, through the dialplan.
    #[arg(required_unless_present_any = ["bridge", "play", "conference"])]
    pub number: Option<String>,
    /// Bridge to this target instead (`user:bob`, a SIP URI).
    #[arg(long, conflicts_with_all = ["number", "play", "conference"])]
    pub bridge: Option<String>,
    /// Play this prompt instead, then hang up.
    #[arg(long, conflicts_with_all = ["number", "conference"])]
    pub play: Option<String>,
    /// Join this conference room instead.
    #[arg(long, conflicts_with = "number")]
    pub conference: Option<String>,
    /// The number the first party's phone shows.
    #[arg(long)]
    pub caller_id: Option<String>,
    #[arg(long)]
    pub caller_name: Option<String>,
    /// Seconds the first party rings.
    #[arg(long)]
    pub timeout: Option<u64>,
}

impl OriginateArgs {
    fn body(&self) -> Value {
        let then = match (&self.number, &self.bridge, &self.play, &self.conference) {
            (Some(n), ..) => serde_json::json!({ "dial": n }),
            (_, Some(b), ..) => serde_json::json!({ "bridge": b }),
            (_, _, Some(p), _) => serde_json::json!({ "play": p }),
            (.., Some(c)) => serde_json::json!({ "conference": c }),
            _ => Value::Null,
        };
        serde_json::json!({
            "to": self.to,
            "then": then,
            "caller_id": self.caller_id,
            "caller_name": self.caller_name,
            "timeout_s": self.timeout,
        })
    }
}

/// Filters for `warden ctl cdr`.
#[derive(Debug, clap::Args)]
pub struct CdrArgs {
    #[arg(long)]
    pub caller: Option<String>,
    #[arg(long)]
    pub callee: Option<String>,
    /// Final SIP code, e.g. 486.
    #[arg(long)]
    pub code: Option<u16>,
    /// Only records received in the last this many minutes.
    #[arg(long)]
    pub minutes: Option<u64>,
    /// Only calls still open.
    #[arg(long)]
    pub open: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print CSV (every column) instead of a table.
    #[arg(long)]
    pub csv: bool,
    #[command(subcommand)]
    pub command: Option<CdrCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CdrCommand {
    /// Every record received in a period, oldest first, streamed to stdout (for billing).
    Export {
        /// From this moment (RFC 3339, e.g. 2026-12-01T00:00:00Z, or a UTC date 2026-12-01).
        #[arg(long)]
        since: Option<String>,
        /// Up to (not including) this moment, as `--since`.
        #[arg(long)]
        until: Option<String>,
        /// csv (a header line, then every column) or json (one JSON object per line).
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
    },
}

/// A moment on the command line: an RFC 3339 timestamp or a date (midnight UTC), in Unix
/// milliseconds.
fn moment(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: jiff::civil::Date = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "{text:?} is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor a date (2026-12-01)"
        )
    })?;
    Ok(date
        .to_zoned(jiff::tz::TimeZone::UTC)?
        .timestamp()
        .as_millisecond())
}

/// `warden ctl cdr export`'s query: the period in Unix milliseconds, and the format.
fn export_query(
    since: Option<&str>,
    until: Option<&str>,
    format: &str,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut query = vec![("format", format.to_owned())];
    if let Some(since) = since {
        query.push(("since_ms", moment(since)?.to_string()));
    }
    if let Some(until) = until {
        query.push(("until_ms", moment(until)?.to_string()));
    }
    Ok(query)
}

#[derive(Debug, Subcommand)]
pub enum Screening {
    /// Users with counters: calls this hour and day, minutes, live calls, countries.
    List,
    /// Clear a user's counters (quotas start again); USER DOMAIN as in user@domain.
    Reset { user: String, domain: String },
    /// Forget a user: counters, countries called, own allow-list.
    Remove { user: String, domain: String },
    /// The allow and block list entries.
    Lists,
    /// Add an entry: LIST is allow or block, KIND number, prefix, country or source.
    Add {
        list: String,
        kind: String,
        value: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Remove an entry.
    Del {
        list: String,
        kind: String,
        value: String,
    },
}

/// Run one command; the exit code says how it went (0 done, 1 refused or unreachable).
pub fn run(config: &Config, command: Ctl) -> std::process::ExitCode {
    match request(config, command) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warden ctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn request(config: &Config, command: Ctl) -> anyhow::Result<String> {
    let addr = config
        .admin
        .address()?
        .ok_or_else(|| anyhow::anyhow!("the admin API is off (admin.listen is empty)"))?;
    let base = format!("http://{addr}");
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let with_token = |r: reqwest::blocking::RequestBuilder| match &config.admin.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let path = |p: &str| format!("{base}{p}");
    let command = match command {
        Ctl::Screening(command) => command,
        Ctl::Cdr(CdrArgs {
            command:
                Some(CdrCommand::Export {
                    since,
                    until,
                    format,
                }),
            ..
        }) => {
            let query = export_query(since.as_deref(), until.as_deref(), &format)?;
            // No overall timeout: an export of years of records may take a while to stream.
            let streaming = reqwest::blocking::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(None)
                .build()?;
            let builder = with_token(streaming.get(path("/cdrs/export")).query(&query));
            // Copied to stdout as it comes, not gathered first.
            sent(builder, &base)?
                .copy_to(&mut std::io::stdout().lock())
                .map_err(|e| anyhow::anyhow!("the export was cut short: {e}"))?;
            return Ok(String::new());
        }
        Ctl::Cdr(args) => {
            let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
            for (key, value) in [("caller", &args.caller), ("callee", &args.callee)] {
                if let Some(v) = value {
                    query.push((key, v.clone()));
                }
            }
            if let Some(code) = args.code {
                query.push(("code", code.to_string()));
            }
            if let Some(minutes) = args.minutes {
                let since = crate::clock::unix_now_ms().saturating_sub(minutes * 60_000);
                query.push(("since_ms", since.to_string()));
            }
            if args.open {
                query.push(("open", "true".into()));
            }
            if args.csv {
                query.push(("format", "csv".into()));
            }
            let body = send(with_token(client.get(path("/cdrs")).query(&query)), &base)?;
            return if args.csv {
                Ok(body)
            } else {
                Ok(cdr_table(&serde_json::from_str(&body)?))
            };
        }
        other => {
            let (builder, table): (_, fn(&Value) -> String) = match other {
                Ctl::Calls => (client.get(path("/calls")), calls_table),
                Ctl::Hangup { call } => (client.delete(path(&format!("/calls/{call}"))), done),
                Ctl::Originate(args) => (client.post(path("/calls")).json(&args.body()), done),
                Ctl::Play { call, prompt, to } => (
                    client
                        .post(path(&format!("/calls/{call}/play")))
                        .json(&serde_json::json!({ "prompt": prompt, "side": to })),
                    done,
                ),
                Ctl::Dtmf { call, digits, to } => (
                    client
                        .post(path(&format!("/calls/{call}/dtmf")))
                        .json(&serde_json::json!({ "digits": digits, "side": to })),
                    done,
                ),
                Ctl::Transfer {
                    call,
                    target,
                    replace,
                } => (
                    client
                        .post(path(&format!("/calls/{call}/transfer")))
                        .json(&serde_json::json!({ "target": target, "replace": replace })),
                    done,
                ),
                Ctl::Record {
                    call,
                    layout,
                    format,
                } => (
                    client
                        .post(path(&format!("/calls/{call}/record")))
                        .json(&serde_json::json!({ "layout": layout, "format": format })),
                    done,
                ),
                Ctl::StopRecording { call } => (
                    client
                        .post(path(&format!("/calls/{call}/stop_recording")))
                        .json(&serde_json::json!({})),
                    done,
                ),
                Ctl::Registrations => (client.get(path("/registrations")), registrations_table),
                Ctl::Gateways => (client.get(path("/gateways")), gateways_table),
                Ctl::Bans => (client.get(path("/guard/bans")), bans_table),
                Ctl::Unban { source } => (
                    client.delete(path(&format!(
                        "/guard/bans/{}",
                        segment(&source.to_string())
                    ))),
                    done,
                ),
                _ => (client.post(path("/reload")), reloaded),
            };
            let body = send(with_token(builder), &base)?;
            return Ok(table(&serde_json::from_str(&body)?));
        }
    };
    let (builder, table): (_, fn(&Value) -> String) = match &command {
        Screening::List => (client.get(path("/screening/users")), users_table),
        Screening::Reset { user, domain } => (
            client.post(path(&format!(
                "/screening/users/{}/reset",
                segment(&format!("{user}@{domain}"))
            ))),
            done,
        ),
        Screening::Remove { user, domain } => (
            client.delete(path(&format!(
                "/screening/users/{}",
                segment(&format!("{user}@{domain}"))
            ))),
            done,
        ),
        Screening::Lists => (client.get(path("/screening/lists")), lists_table),
        Screening::Add {
            list,
            kind,
            value,
            note,
        } => (
            client.post(path("/screening/lists")).json(
                &serde_json::json!({"list": list, "kind": kind, "value": value, "note": note}),
            ),
            lists_table,
        ),
        Screening::Del { list, kind, value } => (
            client.delete(path(&format!(
                "/screening/lists/{}/{}/{}",
                segment(list),
                segment(kind),
                segment(value)
            ))),
            done,
        ),
    };
    let body = send(with_token(builder), &base)?;
    Ok(table(&serde_json::from_str(&body)?))
}

/// Send a request; the body of a success, else the server's refusal as the error.
fn send(builder: reqwest::blocking::RequestBuilder, base: &str) -> anyhow::Result<String> {
    Ok(sent(builder, base)?.text()?)
}

/// The server's answer, when it is a success; its status and text as the error otherwise.
fn sent(
    builder: reqwest::blocking::RequestBuilder,
    base: &str,
) -> anyhow::Result<reqwest::blocking::Response> {
    let response = builder
        .send()
        .map_err(|e| anyhow::anyhow!("cannot reach the server at {base}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().unwrap_or_default();
        anyhow::bail!("{status}: {}", body.trim());
    }
    Ok(response)
}

/// A path segment with the characters URLs reserve escaped.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b'+' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn done(value: &Value) -> String {
    let text = value
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default()))
        .unwrap_or_else(|| value.to_string());
    format!("{text}\n")
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Rows of `value` (an array of objects) under `columns`, each column as wide as its widest.
fn table(value: &Value, columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = value
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_else(|| std::slice::from_ref(value))
        .iter()
        .map(|row| columns.iter().map(|(key, _)| cell(&row[*key])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, title))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(columns.iter().map(|(_, t)| *t).collect());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

fn users_table(value: &Value) -> String {
    table(
        value,
        &[
            ("user", "USER"),
            ("calls_last_hour", "CALLS/H"),
            ("calls_last_day", "CALLS/DAY"),
            ("international_last_day", "INTL/DAY"),
            ("minutes_last_day", "MIN/DAY"),
            ("live_calls", "LIVE"),
            ("countries", "COUNTRIES"),
            ("allowed", "ALLOWED"),
        ],
    )
}

fn calls_table(value: &Value) -> String {
    table(
        value,
        &[
            ("id", "CALL"),
            ("state", "STATE"),
            ("caller", "CALLER"),
            ("callee", "CALLEE"),
            ("source", "SOURCE"),
            ("age_s", "AGE (S)"),
            ("rule", "RULE"),
            ("screening", "SCREENING"),
        ],
    )
}

fn registrations_table(value: &Value) -> String {
    table(
        value,
        &[
            ("aor", "AOR"),
            ("contact", "CONTACT"),
            ("expires_in", "EXPIRES (S)"),
            ("transport", "TRANSPORT"),
            ("source", "SOURCE"),
            ("user_agent", "USER AGENT"),
        ],
    )
}

fn gateways_table(value: &Value) -> String {
    table(
        value,
        &[
            ("gateway", "GATEWAY"),
            ("up", "UP"),
            ("failures", "FAILURES"),
            ("last_status", "LAST ANSWER"),
        ],
    )
}

fn bans_table(value: &Value) -> String {
    table(
        value,
        &[
            ("source", "SOURCE"),
            ("reason", "REASON"),
            ("remaining_s", "REMAINING (S)"),
        ],
    )
}

fn cdr_table(value: &Value) -> String {
    table(
        value,
        &[
            ("received", "RECEIVED"),
            ("caller", "CALLER"),
            ("callee", "CALLEE"),
            ("final_code", "CODE"),
            ("duration_ms", "TALK (MS)"),
            ("hangup_side", "ENDED BY"),
            ("end_reason", "REASON"),
            ("screening", "SCREENING"),
            ("a_codec", "CODEC A"),
            ("b_codec", "CODEC B"),
        ],
    )
}

fn reloaded(value: &Value) -> String {
    format!(
        "dialplan {} reloaded: {} rules\n",
        cell(&value["reloaded"]),
        cell(&value["rules"])
    )
}

fn lists_table(value: &Value) -> String {
    table(
        value,
        &[
            ("list", "LIST"),
            ("kind", "KIND"),
            ("value", "VALUE"),
            ("note", "NOTE"),
            ("added_at", "ADDED (UNIX)"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_and_segments_are_escaped() {
        let v = serde_json::json!([{"user": "alice@example.com", "calls_last_hour": 3, "countries": ["CU", "DE"]}]);
        let t = users_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("USER               CALLS/H"), "{t}");
        assert!(lines[1].starts_with("alice@example.com  3"), "{t}");
        assert!(lines[1].contains("CU,DE"), "{t}");
        assert_eq!(segment("203.0.113.0/24"), "203.0.113.0%2F24");
    }
}
