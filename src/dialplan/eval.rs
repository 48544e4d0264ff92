//! Evaluating a dialplan against one call: the first rule whose conditions all hold wins,
//! with the values its regexes captured. Pure: the facts (and the clock) come in.

use std::net::IpAddr;

use super::template::Values;
use super::{Condition, Dialplan, Field, Rule, TimeWindow};

/// IMS session case (3GPP TS 24.229): the AS serves the caller (originating) or the callee
/// (terminating).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCase {
    Originating,
    Terminating,
}

/// What the rules can look at.
#[derive(Debug, Clone)]
pub struct CallFacts {
    pub ruri_user: String,
    pub ruri_host: String,
    /// The From and To URIs (without display name or tag), and their users.
    pub from: String,
    pub from_user: String,
    pub to: String,
    pub to_user: String,
    pub asserted_identity: Option<String>,
    /// Every header as (name, value), in message order.
    pub headers: Vec<(String, String)>,
    pub source: IpAddr,
    /// "udp", "tcp", ...
    pub transport: String,
    pub session_case: Option<SessionCase>,
    pub caller_registered: bool,
    /// The call is to an emergency number (see `calls.emergency`).
    pub emergency: bool,
    pub now: jiff::Timestamp,
}

/// The rule that matched and what it captured.
#[derive(Debug, Clone)]
pub struct Decision<'p> {
    pub rule: &'p Rule,
    pub values: Values,
}

impl Dialplan {
    /// The first rule whose conditions all hold, with its captures and the call's built-in
    /// variables (`caller`, `callee`, `ruri_host`, `source_ip`, `transport`).
    pub fn evaluate(&self, facts: &CallFacts) -> Option<Decision<'_>> {
        self.rules.iter().find_map(|rule| {
            let values = matches(rule, facts)?;
            Some(Decision { rule, values })
        })
    }

    /// A rule by name (menus continue with one).
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// The values a rule binds when every condition holds.
pub fn matches(rule: &Rule, facts: &CallFacts) -> Option<Values> {
    let mut values = Values::default();
    for (name, value) in [
        ("caller", &facts.from_user),
        ("callee", &facts.ruri_user),
        ("ruri_host", &facts.ruri_host),
        ("transport", &facts.transport),
    ] {
        values.named.insert(name.to_owned(), value.clone());
    }
    values
        .named
        .insert("source_ip".to_owned(), facts.source.to_string());
    // Numbered captures come from the Request-URI user's regex when the rule has one,
    // else from the first regex that matched.
    let numbered_from_ruri = rule
        .conditions
        .iter()
        .any(|c| matches!(c, Condition::Matches(Field::RuriUser, _)));
    let mut numbered_taken = false;
    for condition in &rule.conditions {
        let (regex, subject) = match condition {
            Condition::Matches(field, regex) => (regex, field_value(*field, facts)?),
            Condition::Header(name, regex) => {
                let value = facts
                    .headers
                    .iter()
                    .find(|(n, v)| n.eq_ignore_ascii_case(name) && regex.is_match(v))
                    .map(|(_, v)| v.as_str())?;
                (regex, value)
            }
            other => {
                if !holds(other, facts) {
                    return None;
                }
                continue;
            }
        };
        let captures = regex.captures(subject)?;
        for name in regex.capture_names().flatten() {
            if let Some(m) = captures.name(name) {
                values.named.insert(name.to_owned(), m.as_str().to_owned());
            }
        }
        let is_ruri = matches!(condition, Condition::Matches(Field::RuriUser, _));
        if !numbered_taken && (is_ruri || !numbered_from_ruri) {
            values.groups = captures
                .iter()
                .map(|m| m.map_or(String::new(), |m| m.as_str().to_owned()))
                .collect();
            numbered_taken = true;
        }
    }
    Some(values)
}

fn field_value(field: Field, facts: &CallFacts) -> Option<&str> {
    Some(match field {
        Field::RuriUser => &facts.ruri_user,
        Field::RuriHost => &facts.ruri_host,
        Field::From => &facts.from,
        Field::FromUser => &facts.from_user,
        Field::To => &facts.to,
        Field::ToUser => &facts.to_user,
        Field::AssertedIdentity => facts.asserted_identity.as_deref()?,
    })
}

fn holds(condition: &Condition, facts: &CallFacts) -> bool {
    match condition {
        Condition::Source(nets) => nets
            .iter()
            .any(|(net, len)| in_network(facts.source, *net, *len)),
        Condition::Transport(list) => list
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&facts.transport)),
        Condition::Time(window) => window.contains(facts.now),
        Condition::SessionCase(case) => facts.session_case == Some(*case),
        Condition::CallerRegistered(wanted) => facts.caller_registered == *wanted,
        Condition::Emergency(wanted) => facts.emergency == *wanted,
        Condition::Matches(..) | Condition::Header(..) => true, // evaluated with captures
    }
}

/// Is `addr` in the network `net`/`len`?
pub(crate) fn in_network(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    // An IPv4 peer seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl TimeWindow {
    /// Is `now` inside the window, in its time zone?
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let window = self;
        let local = now.to_zoned(window.zone.clone());
        let day = local.weekday().to_monday_zero_offset() as u8;
        let yesterday = (day + 6) % 7;
        let minute = u16::from(local.hour() as u8) * 60 + u16::from(local.minute() as u8);
        let on = |d: u8| window.days & (1 << d) != 0;
        if window.from_minute <= window.to_minute {
            on(day) && (window.from_minute..window.to_minute).contains(&minute)
        } else {
            // Over midnight: the evening part belongs to today, the morning part to yesterday.
            (on(day) && minute >= window.from_minute)
                || (on(yesterday) && minute < window.to_minute)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::{Action, BridgeMode};

    fn facts(ruri_user: &str) -> CallFacts {
        CallFacts {
            ruri_user: ruri_user.into(),
            ruri_host: "pbx.example.net".into(),
            from: "sip:alice@example.net".into(),
            from_user: "alice".into(),
            to: format!("sip:{ruri_user}@pbx.example.net"),
            to_user: ruri_user.into(),
            asserted_identity: None,
            headers: vec![("X-Customer".into(), "gold-42".into())],
            source: "10.1.2.3".parse().expect("ip"),
            transport: "udp".into(),
            session_case: None,
            caller_registered: true,
            emergency: false,
            now: "2026-11-23T10:00:00Z".parse().expect("time"), // a Monday
        }
    }

    fn plan(text: &str) -> Dialplan {
        Dialplan::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn first(plan: &Dialplan, f: &CallFacts) -> Option<String> {
        plan.evaluate(f).map(|d| d.rule.name.clone())
    }

    #[test]
    fn the_first_matching_rule_wins_with_its_captures() {
        let p = plan(
            r#"
[[rule]]
name = "international"
when = { ruri_user = '^00(?P<country>41|49|33)(\d+)$' }
do = [{ tag = "intl-${country}" }, { bridge = "sip:$2@gw.example.net" }]

[[rule]]
name = "extension"
when = { ruri_user = '^1(\d{3})$' }
do = [{ bridge = ["user:ext$1"] }]

[[rule]]
name = "anything"
do = [{ reject = 404, reason = "No route to ${callee}" }]
"#,
        );
        let d = p.evaluate(&facts("0041441234567")).expect("match");
        assert_eq!(d.rule.name, "international");
        assert_eq!(d.values.named["country"], "41");
        let Action::Tag(tag) = &d.rule.actions[0] else {
            panic!("tag first")
        };
        assert_eq!(tag.render(&d.values), "intl-41");
        let Action::Bridge { targets, mode, .. } = &d.rule.actions[1] else {
            panic!("bridge")
        };
        assert_eq!(*mode, BridgeMode::Sequential);
        assert_eq!(targets[0].render(&d.values), "sip:441234567@gw.example.net");
        let d = p.evaluate(&facts("1234")).expect("match");
        assert_eq!(d.rule.name, "extension");
        let Action::Bridge { targets, .. } = &d.rule.actions[0] else {
            panic!("bridge")
        };
        assert_eq!(targets[0].render(&d.values), "user:ext234");
        let d = p.evaluate(&facts("bob")).expect("catch-all");
        let Action::Reject { status, reason } = &d.rule.actions[0] else {
            panic!("reject")
        };
        assert_eq!(*status, 404);
        assert_eq!(
            reason.as_ref().expect("reason").render(&d.values),
            "No route to bob"
        );
    }

    #[test]
    fn each_condition_kind() {
        let p = plan(
            r#"
[[rule]]
name = "header"
when.header = { X-Customer = '^gold-(?P<account>\d+)$' }
when.ruri_user = '^h$'
do = [{ set_header = "X-Account", value = "${account}" }]

[[rule]]
name = "source"
when = { ruri_user = '^s$', source = ["192.168.0.0/16", "10.0.0.0/8"] }
do = [{ remove_header = "X-Internal" }]

[[rule]]
name = "transport"
when = { ruri_user = '^t$', transport = "tcp" }
do = [{ screen = "default" }]

[[rule]]
name = "session case"
when = { ruri_user = '^c$', session_case = "originating" }
do = [{ set = "lane", value = "orig" }]

[[rule]]
name = "unregistered caller"
when = { ruri_user = '^r$', caller_registered = false }
do = [{ reject = 403 }]

[[rule]]
name = "asserted"
when = { pai = '^sip:\+41' }
do = [{ redirect = ["sip:swiss@example.net", "sip:backup@example.net"] }]

[[rule]]
name = "from"
when = { from_user = '^alice$', to_user = '^f$', ruri_host = 'example\.net$', from = '^sip:', to = '@pbx' }
do = [{ play = "busy", repeat = 2 }]
"#,
        );
        let d = p.evaluate(&facts("h")).expect("header");
        assert_eq!(
            (d.rule.name.as_str(), d.values.named["account"].as_str()),
            ("header", "42")
        );
        assert_eq!(first(&p, &facts("s")).as_deref(), Some("source"));
        let mut f = facts("s");
        f.source = "172.16.0.1".parse().expect("ip");
        assert_eq!(first(&p, &f), None, "outside both networks");
        f.source = "::ffff:192.168.7.7".parse().expect("ip");
        assert_eq!(first(&p, &f).as_deref(), Some("source"), "v4-mapped");
        assert_eq!(first(&p, &facts("t")), None, "udp, not tcp");
        let mut f = facts("t");
        f.transport = "tcp".into();
        assert_eq!(first(&p, &f).as_deref(), Some("transport"));
        assert_eq!(first(&p, &facts("c")), None);
        let mut f = facts("c");
        f.session_case = Some(SessionCase::Originating);
        assert_eq!(first(&p, &f).as_deref(), Some("session case"));
        assert_eq!(first(&p, &facts("r")), None, "alice is registered");
        let mut f = facts("r");
        f.caller_registered = false;
        assert_eq!(first(&p, &f).as_deref(), Some("unregistered caller"));
        let mut f = facts("zz");
        f.asserted_identity = Some("sip:+41441234567@ims.example.net".into());
        assert_eq!(first(&p, &f).as_deref(), Some("asserted"));
        assert_eq!(first(&p, &facts("f")).as_deref(), Some("from"));
    }

    #[test]
    fn time_windows_in_their_zone_with_a_fixed_clock() {
        let p = plan(
            r#"
[[rule]]
name = "office hours"
when.time = { days = "mon-fri", from = "08:00", to = "18:00", zone = "Europe/Zurich" }
do = [{ bridge = "user:reception" }]

[[rule]]
name = "night"
when.time = { days = "fri-sat", from = "22:00", to = "06:00", zone = "America/New_York" }
do = [{ play = "closed" }]
"#,
        );
        let at = |t: &str| {
            let mut f = facts("x");
            f.now = t.parse().expect("time");
            first(&p, &f)
        };
        // Monday 07:59 and 08:00 in Zurich (UTC+1 in November).
        assert_eq!(at("2026-11-23T06:59:00Z"), None);
        assert_eq!(at("2026-11-23T07:00:00Z").as_deref(), Some("office hours"));
        assert_eq!(at("2026-11-23T16:59:00Z").as_deref(), Some("office hours"));
        assert_eq!(at("2026-11-23T17:00:00Z"), None, "18:00 is closing time");
        // Saturday noon in Zurich: closed.
        assert_eq!(at("2026-11-28T11:00:00Z"), None);
        // Over midnight in New York (UTC-5): Friday 23:00, Saturday 05:59 (Friday's
        // night), and Sunday 05:59 (Saturday's night); Monday 01:00 is not.
        assert_eq!(at("2026-11-28T04:00:00Z").as_deref(), Some("night"));
        assert_eq!(at("2026-11-28T10:59:00Z").as_deref(), Some("night"));
        assert_eq!(at("2026-11-29T10:59:00Z").as_deref(), Some("night"));
        assert_eq!(at("2026-11-30T06:00:00Z"), None);
    }

    #[test]
    fn the_screening_example_routes_by_number() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dialplans/screening.toml");
        let p = Dialplan::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        for (number, rule) in [
            ("0041441234567", "international"),
            ("0441234567", "national"),
            ("alice", "user by name or extension"),
            ("1042", "user by name or extension"),
            ("12345", "unknown number"),
        ] {
            assert_eq!(first(&p, &facts(number)).as_deref(), Some(rule), "{number}");
        }
        let d = p.evaluate(&facts("0041441234567")).expect("match");
        assert!(matches!(&d.rule.actions[1], Action::Screen(profile) if profile == "default"));
    }

    #[test]
    fn actions_check_their_arguments() {
        let bad = [
            ("{ bridge = [] }", "at least one target"),
            (
                "{ bridge = \"user:a\", mode = \"random\" }",
                "sequential or parallel",
            ),
            ("{ reject = 404, repeat = 2 }", "takes no \"repeat\""),
            ("{ tag = \"a\", play = \"b\" }", "one action per table"),
            ("{ set_header = \"Via\", value = \"x\" }", "Warden's to set"),
            ("{ set_header = \"X-A\" }", "needs a value"),
            ("{ menu = \"m\", choices = { \"12\" = \"x\" } }", "one key"),
            ("{ bridge = \"sip:$\" }", "lone $"),
            ("{ }", "needs one of"),
            ("{ codecs = [\"G729X\"] }", "not a codec of this build"),
            ("{ codecs = [] }", "at least one codec"),
            (
                "{ srtp = \"yes\" }",
                "one of mirror, mandatory, optional, off",
            ),
        ];
        for (action, expected) in bad {
            let text = format!("[[rule]]\nname = \"r\"\ndo = [{action}]\n");
            let e = Dialplan::parse(&text, "t.toml").expect_err(action);
            assert!(e.cause.contains(expected), "{action}: {}", e.cause);
            assert_eq!(e.line, 3, "{action}");
        }
    }
}
