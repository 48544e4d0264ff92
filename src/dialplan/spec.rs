//! The dialplan file's TOML shape, and its checking into rules. Every error carries the
//! line it is about.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::template::Template;
use super::{Action, BridgeMode, Condition, Field, RedirectPolicy, Rule, SessionCase, TimeWindow};
use crate::anchor::sdes::SrtpPolicy;

type Failure = (usize, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    when: WhenSpec,
    #[serde(rename = "do")]
    actions: Vec<Spanned<ActionSpec>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhenSpec {
    ruri_user: Option<Spanned<String>>,
    ruri_host: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    from_user: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    to_user: Option<Spanned<String>>,
    pai: Option<Spanned<String>>,
    #[serde(default)]
    header: BTreeMap<String, Spanned<String>>,
    source: Option<Spanned<OneOrMany>>,
    transport: Option<Spanned<OneOrMany>>,
    time: Option<Spanned<TimeSpec>>,
    session_case: Option<Spanned<String>>,
    caller_registered: Option<bool>,
    emergency: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeSpec {
    #[serde(default = "all_days")]
    days: String,
    from: String,
    to: String,
    zone: String,
}

fn all_days() -> String {
    "mon-sun".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    bridge: Option<OneOrMany>,
    mode: Option<String>,
    timeout: Option<u64>,
    screen: Option<String>,
    play: Option<String>,
    repeat: Option<u32>,
    menu: Option<String>,
    choices: Option<BTreeMap<String, String>>,
    reject: Option<u16>,
    reason: Option<String>,
    redirect: Option<OneOrMany>,
    set_header: Option<String>,
    remove_header: Option<String>,
    value: Option<String>,
    tag: Option<String>,
    set: Option<String>,
    codecs: Option<OneOrMany>,
    answer: Option<bool>,
    hold_music: Option<String>,
    conference: Option<String>,
    srtp: Option<String>,
    session_expires: Option<u32>,
    max_duration: Option<u64>,
    on_redirect: Option<String>,
    probe: Option<bool>,
    record: Option<String>,
}

/// Line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

pub(super) fn parse(text: &str) -> Result<Vec<Rule>, Failure> {
    let file: FileSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        (line, e.message().to_owned())
    })?;
    let mut rules = Vec::new();
    for spanned in &file.rule {
        let line = line_of(text, spanned.span().start);
        let spec = spanned.get_ref();
        let at = |s: &std::ops::Range<usize>| line_of(text, s.start);
        let conditions = conditions(&spec.when, &at)?;
        let mut actions = Vec::new();
        for a in &spec.actions {
            actions.push(action(a.get_ref()).map_err(|cause| (at(&a.span()), cause))?);
        }
        if actions.is_empty() {
            return Err((line, format!("rule {:?} has no actions", spec.name)));
        }
        rules.push(Rule {
            name: spec.name.clone(),
            line,
            conditions,
            actions,
        });
    }
    // A menu's choices name rules: they must exist.
    for rule in &rules {
        for action in &rule.actions {
            if let Action::Menu { choices, .. } = action {
                for (_, target) in choices {
                    if !rules.iter().any(|r| &r.name == target) {
                        return Err((
                            rule.line,
                            format!(
                                "menu in rule {:?} names rule {target:?}, which does not exist",
                                rule.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(rules)
}

fn regex(
    name: &str,
    value: &Spanned<String>,
    at: &dyn Fn(&std::ops::Range<usize>) -> usize,
) -> Result<Regex, Failure> {
    Regex::new(value.get_ref()).map_err(|e| (at(&value.span()), format!("{name}: bad regex: {e}")))
}

fn conditions(
    when: &WhenSpec,
    at: &dyn Fn(&std::ops::Range<usize>) -> usize,
) -> Result<Vec<Condition>, Failure> {
    let mut out = Vec::new();
    let fields = [
        ("ruri_user", &when.ruri_user, Field::RuriUser),
        ("ruri_host", &when.ruri_host, Field::RuriHost),
        ("from", &when.from, Field::From),
        ("from_user", &when.from_user, Field::FromUser),
        ("to", &when.to, Field::To),
        ("to_user", &when.to_user, Field::ToUser),
        ("pai", &when.pai, Field::AssertedIdentity),
    ];
    for (name, value, field) in fields {
        if let Some(v) = value {
            out.push(Condition::Matches(field, regex(name, v, at)?));
        }
    }
    for (header, value) in &when.header {
        out.push(Condition::Header(
            header.clone(),
            regex(&format!("header {header}"), value, at)?,
        ));
    }
    if let Some(source) = &when.source {
        let nets = source
            .get_ref()
            .list()
            .iter()
            .map(|s| cidr(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (at(&source.span()), format!("source {e}")))?;
        out.push(Condition::Source(nets));
    }
    if let Some(transport) = &when.transport {
        let list: Vec<String> = transport
            .get_ref()
            .list()
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect();
        if let Some(bad) = list
            .iter()
            .find(|t| !matches!(t.as_str(), "udp" | "tcp" | "tls" | "ws" | "wss"))
        {
            return Err((
                at(&transport.span()),
                format!("transport {bad:?}: expected udp, tcp, tls, ws or wss"),
            ));
        }
        out.push(Condition::Transport(list));
    }
    if let Some(time) = &when.time {
        out.push(Condition::Time(
            window(time.get_ref()).map_err(|e| (at(&time.span()), e))?,
        ));
    }
    if let Some(case) = &when.session_case {
        let case_value = match case.get_ref().as_str() {
            "originating" | "orig" => SessionCase::Originating,
            "terminating" | "term" => SessionCase::Terminating,
            other => {
                return Err((
                    at(&case.span()),
                    format!("session_case {other:?}: expected originating or terminating"),
                ));
            }
        };
        out.push(Condition::SessionCase(case_value));
    }
    if let Some(registered) = when.caller_registered {
        out.push(Condition::CallerRegistered(registered));
    }
    if let Some(emergency) = when.emergency {
        out.push(Condition::Emergency(emergency));
    }
    Ok(out)
}

/// An address or network (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.1`).
pub(crate) fn cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0-{max}"))?,
        None => max,
    };
    Ok((ip, len))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn window(spec: &TimeSpec) -> Result<TimeWindow, String> {
    TimeWindow::parse(&spec.days, &spec.from, &spec.to, &spec.zone)
}

impl TimeWindow {
    /// `days` like "mon-fri,sun", `from`/`to` as HH:MM, `zone` an IANA time zone.
    pub fn parse(days_text: &str, from: &str, to: &str, zone: &str) -> Result<TimeWindow, String> {
        let day = |d: &str| {
            DAYS.iter()
                .position(|x| x.eq_ignore_ascii_case(d.trim()))
                .ok_or_else(|| format!("day {d:?}: expected mon, tue, wed, thu, fri, sat or sun"))
        };
        let mut days = 0u8;
        for part in days_text.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut d = a;
                    loop {
                        days |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days |= 1 << day(part)?,
            }
        }
        let minute = |t: &str| -> Result<u16, String> {
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| format!("time {t:?}: expected HH:MM"))?;
            let (h, m): (u16, u16) = (
                h.trim()
                    .parse()
                    .map_err(|_| format!("time {t:?}: expected HH:MM"))?,
                m.trim()
                    .parse()
                    .map_err(|_| format!("time {t:?}: expected HH:MM"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(format!("time {t:?}: out of range"));
            }
            Ok(h * 60 + m)
        };
        let tz = jiff::tz::TimeZone::get(zone)
            .map_err(|_| format!("time zone {zone:?} is not known"))?;
        Ok(TimeWindow {
            days,
            from_minute: minute(from)?,
            to_minute: minute(to)?,
            zone: tz,
        })
    }
}

fn template(what: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("{what}: {e}"))
}

fn templates(what: &str, list: &OneOrMany) -> Result<Vec<Template>, String> {
    let list = list.list();
    if list.is_empty() {
        return Err(format!("{what}: at least one target"));
    }
    list.iter().map(|t| template(what, t)).collect()
}

/// One action from its inline table: exactly one action key, and only the options it takes.
fn action(spec: &ActionSpec) -> Result<Action, String> {
    let kinds = [
        ("bridge", spec.bridge.is_some()),
        ("screen", spec.screen.is_some()),
        ("play", spec.play.is_some()),
        ("menu", spec.menu.is_some()),
        ("reject", spec.reject.is_some()),
        ("redirect", spec.redirect.is_some()),
        ("set_header", spec.set_header.is_some()),
        ("remove_header", spec.remove_header.is_some()),
        ("tag", spec.tag.is_some()),
        ("set", spec.set.is_some()),
        ("codecs", spec.codecs.is_some()),
        ("answer", spec.answer == Some(true)),
        ("hold_music", spec.hold_music.is_some()),
        ("conference", spec.conference.is_some()),
        ("srtp", spec.srtp.is_some()),
        ("session_expires", spec.session_expires.is_some()),
        ("max_duration", spec.max_duration.is_some()),
        ("on_redirect", spec.on_redirect.is_some()),
        ("record", spec.record.is_some()),
    ];
    let present: Vec<&str> = kinds.iter().filter(|(_, p)| *p).map(|(k, _)| *k).collect();
    let kind = match present.as_slice() {
        [one] => *one,
        [] => return Err("an action needs one of: bridge, screen, play, menu, reject, redirect, set_header, remove_header, tag, set, codecs, srtp, hold_music, conference, session_expires, max_duration, on_redirect, record, answer = true".into()),
        many => return Err(format!("one action per table, found {}", many.join(" and "))),
    };
    let options = [
        ("mode", spec.mode.is_some(), &["bridge"][..]),
        ("timeout", spec.timeout.is_some(), &["bridge", "menu"][..]),
        ("probe", spec.probe.is_some(), &["bridge"][..]),
        ("repeat", spec.repeat.is_some(), &["play"][..]),
        ("choices", spec.choices.is_some(), &["menu"][..]),
        ("reason", spec.reason.is_some(), &["reject"][..]),
        ("value", spec.value.is_some(), &["set_header", "set"][..]),
    ];
    if let Some((option, _, _)) = options
        .iter()
        .find(|(_, given, allowed)| *given && !allowed.contains(&kind))
    {
        return Err(format!("{kind} takes no {option:?}"));
    }
    let value = |what: &str| -> Result<Template, String> {
        template(
            what,
            spec.value
                .as_deref()
                .ok_or_else(|| format!("{what} needs a value"))?,
        )
    };
    Ok(match kind {
        "bridge" => Action::Bridge {
            targets: templates("bridge", spec.bridge.as_ref().ok_or("bridge")?)?,
            mode: match spec.mode.as_deref() {
                None | Some("sequential") => BridgeMode::Sequential,
                Some("parallel") => BridgeMode::Parallel,
                Some(other) => {
                    return Err(format!(
                        "bridge mode {other:?}: expected sequential or parallel"
                    ));
                }
            },
            timeout: spec.timeout.map(|s| Duration::from_secs(s.clamp(1, 600))),
            probe: spec.probe.unwrap_or(false),
        },
        "screen" => Action::Screen(spec.screen.clone().unwrap_or_default()),
        "play" => Action::Play {
            prompt: template("play", spec.play.as_deref().unwrap_or_default())?,
            repeat: spec.repeat.unwrap_or(0),
        },
        "menu" => {
            let mut choices = Vec::new();
            for (key, target) in spec
                .choices
                .as_ref()
                .ok_or("menu needs choices (key = rule name)")?
            {
                let mut chars = key.chars();
                match (chars.next(), chars.next()) {
                    (Some(k @ ('0'..='9' | '*' | '#')), None) => choices.push((k, target.clone())),
                    _ => return Err(format!("menu choice {key:?}: one key, 0-9, * or #")),
                }
            }
            Action::Menu {
                prompt: template("menu", spec.menu.as_deref().unwrap_or_default())?,
                choices,
                timeout: Duration::from_secs(spec.timeout.unwrap_or(5).clamp(1, 60)),
            }
        }
        "reject" => {
            let status = spec.reject.unwrap_or(0);
            if !(400..=699).contains(&status) {
                return Err(format!("reject {status}: the status must be 400-699"));
            }
            if crate::sip::status::standard_phrase(status).is_none() {
                return Err(format!(
                    "reject {status}: not a status code in the IANA SIP registry (phones would not know what it means)"
                ));
            }
            Action::Reject {
                status,
                reason: spec
                    .reason
                    .as_deref()
                    .map(|r| template("reason", r))
                    .transpose()?,
            }
        }
        "redirect" => Action::Redirect(templates(
            "redirect",
            spec.redirect.as_ref().ok_or("redirect")?,
        )?),
        "set_header" => {
            let name = spec.set_header.clone().unwrap_or_default();
            header_name(&name)?;
            Action::SetHeader(name, value("set_header")?)
        }
        "remove_header" => {
            let name = spec.remove_header.clone().unwrap_or_default();
            header_name(&name)?;
            Action::RemoveHeader(name)
        }
        "answer" => Action::Answer,
        "record" => match spec.record.as_deref().unwrap_or_default() {
            "stereo" => Action::Record(Some(warden_media::record::Layout::Stereo)),
            "mono" => Action::Record(Some(warden_media::record::Layout::Mono)),
            "" | "default" => Action::Record(None),
            other => {
                return Err(format!(
                    "record {other:?}: stereo (caller left, callee right), mono, or default"
                ));
            }
        },
        "conference" => {
            let room = spec.conference.as_deref().unwrap_or_default();
            if room.trim().is_empty() {
                return Err("conference needs a room name".into());
            }
            Action::Conference(template("conference", room)?)
        }
        "hold_music" => Action::HoldMusic(spec.hold_music.clone().unwrap_or_default()),
        "srtp" => {
            let policy = spec.srtp.as_deref().unwrap_or_default();
            Action::Srtp(SrtpPolicy::parse(policy).ok_or_else(|| {
                format!("srtp {policy:?}: one of mirror, mandatory, optional, off")
            })?)
        }
        "session_expires" => {
            let seconds = spec.session_expires.unwrap_or_default();
            if seconds != 0 && seconds < 90 {
                return Err(format!(
                    "session_expires {seconds}: 0 (no session timer) or at least 90 seconds (RFC 4028)"
                ));
            }
            Action::SessionExpires(seconds)
        }
        "max_duration" => match spec.max_duration.unwrap_or_default() {
            0 => return Err("max_duration 0: give the longest call in seconds".into()),
            s => Action::MaxDuration(Duration::from_secs(s)),
        },
        "on_redirect" => match spec.on_redirect.as_deref().unwrap_or_default() {
            "follow" => Action::OnRedirect(RedirectPolicy::Follow),
            "relay" => Action::OnRedirect(RedirectPolicy::Relay),
            other => return Err(format!("on_redirect {other:?}: expected follow or relay")),
        },
        "tag" => Action::Tag(template("tag", spec.tag.as_deref().unwrap_or_default())?),
        "codecs" => {
            let list = spec
                .codecs
                .as_ref()
                .map(OneOrMany::list)
                .unwrap_or_default();
            if list.is_empty() {
                return Err("codecs: at least one codec".into());
            }
            let known = warden_media::codec::all();
            for name in &list {
                if !known.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                    let have: Vec<&str> = known.iter().map(|c| c.name).collect();
                    return Err(format!(
                        "codecs: {name:?} is not a codec of this build ({})",
                        have.join(", ")
                    ));
                }
            }
            Action::Codecs(list)
        }
        _ => {
            let name = spec.set.clone().unwrap_or_default();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "set {name:?}: variable names are letters, digits and _"
                ));
            }
            Action::Set(name, value("set")?)
        }
    })
}

/// Headers a dialplan may not touch: they carry the dialog and transaction.
const PROTECTED: [&str; 8] = [
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "content-length",
    "max-forwards",
];

fn header_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return Err(format!("header name {name:?}: letters, digits and -"));
    }
    if PROTECTED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("header {name} is Warden's to set"));
    }
    Ok(())
}
