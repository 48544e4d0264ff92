//! The operator's allow and block lists (numbers, prefixes, countries, source networks) and
//! each user's own allow-list (values a passed challenge vouched for). Kept in the database.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListName {
    Allow,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A whole E.164 number (digits, no +).
    Number,
    /// E.164 digits every number starting with them matches.
    Prefix,
    /// An ISO country code from the E.164 table.
    Country,
    /// A source address or network (CIDR).
    Source,
}

impl ListName {
    pub fn parse(text: &str) -> Option<ListName> {
        match text {
            "allow" => Some(ListName::Allow),
            "block" => Some(ListName::Block),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListName::Allow => "allow",
            ListName::Block => "block",
        }
    }
}

impl EntryKind {
    pub fn parse(text: &str) -> Option<EntryKind> {
        match text {
            "number" => Some(EntryKind::Number),
            "prefix" => Some(EntryKind::Prefix),
            "country" => Some(EntryKind::Country),
            "source" => Some(EntryKind::Source),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Number => "number",
            EntryKind::Prefix => "prefix",
            EntryKind::Country => "country",
            EntryKind::Source => "source",
        }
    }

    /// The stored form of `value`, or why it is not one.
    pub fn normalize(self, value: &str) -> Result<String, String> {
        let value = value.trim();
        match self {
            EntryKind::Number | EntryKind::Prefix => {
                let digits = value.trim_start_matches('+');
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("{value:?} is not an E.164 {}", self.as_str()));
                }
                Ok(digits.to_owned())
            }
            EntryKind::Country => {
                if value.len() < 2 || value.len() > 5 {
                    return Err(format!("{value:?} is not a country code"));
                }
                Ok(value.to_ascii_uppercase())
            }
            EntryKind::Source => {
                crate::dialplan::parse_network(value).map(|(ip, len)| format!("{ip}/{len}"))
            }
        }
    }
}

/// One entry, as listed to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub list: ListName,
    pub kind: EntryKind,
    pub value: String,
    pub note: String,
    pub added_at: u64,
}

impl fmt::Display for ListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.list.as_str(),
            self.kind.as_str(),
            self.value
        )
    }
}

/// What a lookup found on the lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub list: ListName,
    pub entry: String,
}

#[derive(Debug, Default, Clone)]
pub struct Lists {
    entries: BTreeMap<(ListName, EntryKind, String), ListEntry>,
    /// Per user: values vouched for by a passed challenge ("country:CU", "number:53...").
    user_allow: BTreeMap<String, HashSet<String>>,
}

impl Lists {
    pub fn add(&mut self, entry: ListEntry) {
        self.entries
            .insert((entry.list, entry.kind, entry.value.clone()), entry);
    }

    pub fn remove(&mut self, list: ListName, kind: EntryKind, value: &str) -> bool {
        self.entries
            .remove(&(list, kind, value.to_owned()))
            .is_some()
    }

    pub fn entries(&self) -> impl Iterator<Item = &ListEntry> {
        self.entries.values()
    }

    pub fn allow_for_user(&mut self, user: &str, value: &str) {
        self.user_allow
            .entry(user.to_owned())
            .or_default()
            .insert(value.to_owned());
    }

    pub fn user_allows(&self, user: &str, value: &str) -> bool {
        self.user_allow.get(user).is_some_and(|v| v.contains(value))
    }

    pub fn user_allow_list(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .user_allow
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn forget_user(&mut self, user: &str) -> bool {
        self.user_allow.remove(user).is_some()
    }

    fn has(&self, list: ListName, kind: EntryKind, value: &str) -> bool {
        self.entries.contains_key(&(list, kind, value.to_owned()))
    }

    /// The entry of `list` a destination matches: the number itself, a prefix of it, its
    /// country.
    pub fn destination(&self, list: ListName, e164: &str, iso: Option<&str>) -> Option<Listed> {
        if self.has(list, EntryKind::Number, e164) {
            return Some(Listed {
                list,
                entry: format!("number {e164}"),
            });
        }
        // Prefix lists are short; longest first so the note names the most specific entry.
        if let Some(p) = (1..=e164.len())
            .rev()
            .map(|n| &e164[..n])
            .find(|p| self.has(list, EntryKind::Prefix, p))
        {
            return Some(Listed {
                list,
                entry: format!("prefix {p}"),
            });
        }
        iso.filter(|c| self.has(list, EntryKind::Country, c))
            .map(|c| Listed {
                list,
                entry: format!("country {c}"),
            })
    }

    /// The block-list network `source` is in.
    pub fn blocked_source(&self, source: IpAddr) -> Option<String> {
        self.entries
            .range((ListName::Block, EntryKind::Source, String::new())..)
            .take_while(|((l, k, _), _)| *l == ListName::Block && *k == EntryKind::Source)
            .find(|((_, _, net), _)| {
                crate::dialplan::parse_network(net)
                    .is_ok_and(|n| crate::dialplan::in_networks(source, &[n]))
            })
            .map(|((_, _, net), _)| net.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(list: ListName, kind: EntryKind, value: &str) -> ListEntry {
        ListEntry {
            list,
            kind,
            value: kind.normalize(value).unwrap(),
            note: String::new(),
            added_at: 0,
        }
    }

    #[test]
    fn destinations_match_number_prefix_and_country() {
        let mut l = Lists::default();
        l.add(entry(ListName::Block, EntryKind::Prefix, "+4930"));
        l.add(entry(ListName::Block, EntryKind::Prefix, "49"));
        l.add(entry(ListName::Block, EntryKind::Country, "cu"));
        l.add(entry(ListName::Allow, EntryKind::Number, "+5371234567"));
        let hit = |e164, iso| l.destination(ListName::Block, e164, iso).map(|h| h.entry);
        assert_eq!(hit("49301234", Some("DE")).as_deref(), Some("prefix 4930"));
        assert_eq!(hit("49891234", Some("DE")).as_deref(), Some("prefix 49"));
        assert_eq!(hit("5379999999", Some("CU")).as_deref(), Some("country CU"));
        assert_eq!(hit("447700900123", Some("GB")), None);
        assert!(
            l.destination(ListName::Allow, "5371234567", Some("CU"))
                .is_some()
        );
        assert!(l.remove(ListName::Block, EntryKind::Country, "CU"));
        assert_eq!(
            l.destination(ListName::Block, "5379999999", Some("CU")),
            None
        );
    }

    #[test]
    fn sources_match_by_network_and_bad_values_are_refused() {
        let mut l = Lists::default();
        l.add(entry(ListName::Block, EntryKind::Source, "203.0.113.0/24"));
        assert_eq!(
            l.blocked_source("203.0.113.9".parse().unwrap()).as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(l.blocked_source("198.51.100.1".parse().unwrap()), None);
        assert!(EntryKind::Number.normalize("12ab").is_err());
        assert!(EntryKind::Source.normalize("300.1.1.1").is_err());
    }

    #[test]
    fn user_allow_lists_are_per_user() {
        let mut l = Lists::default();
        l.allow_for_user("alice@example.com", "country:CU");
        assert!(l.user_allows("alice@example.com", "country:CU"));
        assert!(!l.user_allows("bob@example.com", "country:CU"));
        assert!(l.forget_user("alice@example.com"));
        assert!(!l.user_allows("alice@example.com", "country:CU"));
    }
}
