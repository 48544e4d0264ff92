//! Dialplans: ordered rules in a TOML file, each with conditions on the call and a list of
//! actions. Loading checks everything (regexes, CIDRs, time zones, action arguments) and
//! refuses a bad file with its name, line and cause; evaluation is pure (see `eval`).
//!
//! ```toml
//! [[rule]]
//! name = "extensions"
//! when = { ruri_user = '^1(\d{3})$' }
//! do = [{ tag = "internal" }, { bridge = ["user:ext$1"] }]
//! ```

pub mod eval;
mod spec;
pub mod template;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

pub use eval::{CallFacts, Decision, SessionCase};
use template::Template;

/// A file that could not be loaded: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {cause}")]
pub struct DialplanError {
    pub file: String,
    pub line: usize,
    pub cause: String,
}

/// A loaded, checked dialplan.
#[derive(Debug, Clone)]
pub struct Dialplan {
    /// Where it came from (a path, or "built-in default").
    pub origin: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Line of the rule in its file, for logs.
    pub line: usize,
    pub conditions: Vec<Condition>,
    pub actions: Vec<Action>,
}

/// A regex on one field of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RuriUser,
    RuriHost,
    From,
    FromUser,
    To,
    ToUser,
    AssertedIdentity,
}

#[derive(Debug, Clone)]
pub enum Condition {
    Matches(Field, Regex),
    Header(String, Regex),
    /// Source address in one of these networks (address, prefix length).
    Source(Vec<(IpAddr, u8)>),
    Transport(Vec<String>),
    Time(TimeWindow),
    SessionCase(SessionCase),
    CallerRegistered(bool),
    /// The call is to an emergency number (`calls.emergency`, or `urn:service:sos`).
    Emergency(bool),
}

/// Days of the week (bit 0 = Monday) and a span of the day, in a time zone. A span whose
/// end is before its start runs over midnight.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    pub days: u8,
    pub from_minute: u16,
    pub to_minute: u16,
    pub zone: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeMode {
    /// One target after the other: the next on timeout or a 5xx/6xx... failure.
    Sequential,
    /// All at once; the first answer wins, the others are cancelled.
    Parallel,
}

#[derive(Debug, Clone)]
pub enum Action {
    Bridge {
        targets: Vec<Template>,
        mode: BridgeMode,
        /// Per target (sequential) or overall (parallel) ring time; None: the config's
        /// `calls.no_answer_timeout_s`.
        timeout: Option<Duration>,
        /// Probe the targets with OPTIONS (`calls.probe_s`); one that stopped answering is
        /// skipped at once.
        probe: bool,
    },
    /// Warden answers the caller itself (200 OK with its own SDP): prompts and menus after
    /// this are heard on an answered call; when the actions run out Warden hangs up.
    Answer,
    Screen(String),
    Play {
        prompt: Template,
        repeat: u32,
    },
    Menu {
        prompt: Template,
        /// Key -> name of the rule to continue with.
        choices: Vec<(char, String)>,
        timeout: Duration,
    },
    Reject {
        status: u16,
        reason: Option<Template>,
    },
    Redirect(Vec<Template>),
    /// The callee-side offer lists only these codecs, in this order (Warden transcodes
    /// when the caller offered none of them): e.g. PCMA toward an IMS core.
    Codecs(Vec<String>),
    SetHeader(String, Template),
    RemoveHeader(String),
    Tag(Template),
    Set(String, Template),
    /// SRTP toward the callee (the offer made to it is rewritten): see `SrtpPolicy`.
    Srtp(crate::anchor::sdes::SrtpPolicy),
    /// The prompt the caller or callee hears while the other holds this call ("" none).
    HoldMusic(String),
    /// Warden answers and puts the caller in this conference room (the room begins with
    /// its first member and ends with its last); the call's last action.
    Conference(Template),
    /// This route's session interval (RFC 4028) on both legs; 0: no session timers.
    SessionExpires(u32),
    /// The call is ended this long after it was answered (end reason `max-duration`).
    MaxDuration(Duration),
    /// What a callee's 3xx does: followed by Warden, or relayed to the caller.
    OnRedirect(RedirectPolicy),
    /// Record the call once both parties' media flows (None: `recording.layout`).
    Record(Option<warden_media::record::Layout>),
}

/// What happens to a callee's redirection (3xx) on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectPolicy {
    /// Warden calls the Contacts itself (at most 5 per call), as the route's targets.
    #[default]
    Follow,
    /// The caller gets the 3xx with its Contacts.
    Relay,
}

/// Parse an address or CIDR (for config lists of trusted peers).
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    spec::cidr(text)
}

/// Is `addr` in any of `nets`?
pub fn in_networks(addr: IpAddr, nets: &[(IpAddr, u8)]) -> bool {
    nets.iter()
        .any(|(net, len)| eval::in_network(addr, *net, *len))
}

/// The dialplan shipped in `dialplans/default.toml`, built into the binary.
pub const DEFAULT: &str = include_str!("../../dialplans/default.toml");

impl Dialplan {
    /// The bridge targets of `probe = true` bridges, whatever the call (substitutions
    /// filled in: a target's address does not depend on the number it dials).
    pub fn probed_targets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| &r.actions)
            .filter_map(|a| match a {
                Action::Bridge {
                    targets,
                    probe: true,
                    ..
                } => Some(targets.iter().map(|t| t.render_filled("probe"))),
                _ => None,
            })
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Read and check a dialplan file.
    pub fn load(path: &Path) -> Result<Dialplan, DialplanError> {
        let text = std::fs::read_to_string(path).map_err(|e| DialplanError {
            file: path.display().to_string(),
            line: 0,
            cause: format!("cannot read: {e}"),
        })?;
        Dialplan::parse(&text, &path.display().to_string())
    }

    /// The built-in default dialplan.
    pub fn builtin() -> Dialplan {
        // Checked by a test; a broken built-in plan is a build defect, not an input error.
        Dialplan::parse(DEFAULT, "built-in default").unwrap_or_else(|e| Dialplan {
            origin: format!("built-in default (unusable: {e})"),
            rules: Vec::new(),
        })
    }

    /// Check a dialplan's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Dialplan, DialplanError> {
        let rules = spec::parse(text).map_err(|(line, cause)| DialplanError {
            file: origin.to_owned(),
            line,
            cause,
        })?;
        Ok(Dialplan {
            origin: origin.to_owned(),
            rules,
        })
    }

    /// The file a config names, or the built-in default.
    pub fn from_config(path: Option<&PathBuf>) -> Result<Dialplan, DialplanError> {
        match path {
            Some(p) => Dialplan::load(p),
            None => Ok(Dialplan::builtin()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_dialplans_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dialplans");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).expect("dialplans/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let plan = Dialplan::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!plan.rules.is_empty(), "{}", path.display());
                loaded += 1;
            }
        }
        assert!(loaded >= 1);
        assert!(!Dialplan::builtin().rules.is_empty());
    }

    #[test]
    fn errors_name_the_file_line_and_cause() {
        let bad_regex =
            "[[rule]]\nname = \"x\"\nwhen = { ruri_user = '^(1' }\ndo = [{ reject = 403 }]\n";
        let e = Dialplan::parse(bad_regex, "plan.toml").expect_err("refused");
        assert_eq!((e.file.as_str(), e.line), ("plan.toml", 3));
        assert!(e.cause.contains("ruri_user"), "{}", e.cause);

        let bad_status = "[[rule]]\nname = \"x\"\n\ndo = [{ reject = 42 }]\n";
        let e = Dialplan::parse(bad_status, "plan.toml").expect_err("refused");
        assert_eq!(e.line, 4);
        assert!(e.cause.contains("400-699"), "{}", e.cause);

        let unassigned = "[[rule]]\nname = \"x\"\n\ndo = [{ reject = 499 }]\n";
        let e = Dialplan::parse(unassigned, "plan.toml").expect_err("refused");
        assert_eq!(e.line, 4);
        assert!(e.cause.contains("IANA"), "{}", e.cause);

        let unknown_key =
            "[[rule]]\nname = \"x\"\nwhen = { ruri_usr = 'a' }\ndo = [{ reject = 403 }]\n";
        let e = Dialplan::parse(unknown_key, "plan.toml").expect_err("refused");
        assert_eq!(e.line, 3);
        assert!(e.cause.contains("ruri_usr"), "{}", e.cause);

        let bad_zone = "[[rule]]\nname = \"x\"\nwhen.time = { days = \"mon-fri\", from = \"08:00\", to = \"18:00\", zone = \"Mars/Olympus\" }\ndo = [{ reject = 403 }]\n";
        let e = Dialplan::parse(bad_zone, "plan.toml").expect_err("refused");
        assert_eq!(e.line, 3);
        assert!(e.cause.contains("Mars/Olympus"), "{}", e.cause);

        let unknown_menu_target = "[[rule]]\nname = \"x\"\ndo = [{ menu = \"ivr_menu\", choices = { \"1\" = \"nowhere\" } }]\n";
        let e = Dialplan::parse(unknown_menu_target, "plan.toml").expect_err("refused");
        assert!(e.cause.contains("nowhere"), "{}", e.cause);

        let bad_layout =
            "[[rule]]\nname = \"x\"\n\ndo = [{ record = \"quad\" }, { reject = 480 }]\n";
        let e = Dialplan::parse(bad_layout, "plan.toml").expect_err("refused");
        assert_eq!(e.line, 4);
        assert!(
            e.cause.contains("\"quad\"") && e.cause.contains("stereo"),
            "{}",
            e.cause
        );
    }
}
