//! Numbers as screening sees them: a dialed string made international (E.164 digits), its
//! country from the shipped ITU table, and its risk class from the shipped high-risk list.

use std::collections::HashMap;

/// Longest-prefix lookup over digit strings.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    entries: HashMap<String, T>,
    longest: usize,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            entries: HashMap::new(),
            longest: 0,
        }
    }
}

impl<T> PrefixTable<T> {
    pub fn insert(&mut self, prefix: &str, value: T) {
        self.longest = self.longest.max(prefix.len());
        self.entries.insert(prefix.to_owned(), value);
    }

    /// The entry with the longest prefix of `digits`, with that prefix.
    pub fn longest_match(&self, digits: &str) -> Option<(&str, &T)> {
        (1..=self.longest.min(digits.len()))
            .rev()
            .find_map(|n| self.entries.get_key_value(&digits[..n]))
            .map(|(k, v)| (k.as_str(), v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A country (or non-geographic service) an E.164 number belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    /// ISO 3166-1 alpha-2, or `+881` style for non-geographic codes.
    pub iso: String,
    pub name: String,
}

/// Why a range is high risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Geographic ranges IRSF keeps targeting.
    Irsf,
    /// International premium rate and satellite/network codes.
    Premium,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Irsf => "irsf",
            Risk::Premium => "premium",
        }
    }
}

/// A high-risk range: its class and the list's note.
#[derive(Debug, Clone)]
pub struct RiskRange {
    pub risk: Risk,
    pub note: String,
}

pub const COUNTRY_CODES: &str = include_str!("data/country_codes.txt");
pub const HIGH_RISK: &str = include_str!("data/high_risk.txt");

/// Meaningful lines of a shipped table: (line number, fields), comments and blanks skipped.
fn table_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (i + 1, fields(line)))
    })
}

/// Two words, then the rest of the line (the note) when there is any.
fn fields(line: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(3);
    let mut rest = line;
    for _ in 0..2 {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    let rest = rest.trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn digits_only(prefix: &str, origin: &str, line: usize) -> Result<(), String> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 15 {
        return Err(format!(
            "{origin}:{line}: {prefix:?} is not an E.164 prefix (digits, no +)"
        ));
    }
    Ok(())
}

/// Parse the country table (`prefix ISO name` per line).
pub fn countries(text: &str, origin: &str) -> Result<PrefixTable<Country>, String> {
    let mut table = PrefixTable::default();
    for (line, fields) in table_lines(text) {
        let [prefix, iso, name] = fields[..] else {
            return Err(format!("{origin}:{line}: expected `prefix ISO name`"));
        };
        digits_only(prefix, origin, line)?;
        table.insert(
            prefix,
            Country {
                iso: iso.to_owned(),
                name: name.trim().to_owned(),
            },
        );
    }
    Ok(table)
}

/// Parse a high-risk list (`prefix irsf|premium note` per line).
pub fn high_risk(text: &str, origin: &str) -> Result<PrefixTable<RiskRange>, String> {
    let mut table = PrefixTable::default();
    for (line, fields) in table_lines(text) {
        let (prefix, class) = match fields[..] {
            [p, c] | [p, c, _] => (p, c),
            _ => {
                return Err(format!(
                    "{origin}:{line}: expected `prefix irsf|premium note`"
                ));
            }
        };
        digits_only(prefix, origin, line)?;
        let risk = match class {
            "irsf" => Risk::Irsf,
            "premium" => Risk::Premium,
            other => {
                return Err(format!(
                    "{origin}:{line}: class {other:?}: expected irsf or premium"
                ));
            }
        };
        let note = fields
            .get(2)
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        table.insert(prefix, RiskRange { risk, note });
    }
    Ok(table)
}

/// How numbers are dialed where the profile serves: `00` before international numbers,
/// `0` before national ones, in the home country.
#[derive(Debug, Clone)]
pub struct DialingPlan {
    /// Calling code of the home country, e.g. "44".
    pub home_code: String,
    pub international_prefix: String,
    pub national_prefix: String,
}

impl DialingPlan {
    /// The E.164 digits (no +) of a dialed number, or None when it is not a telephone
    /// number (a user name, a short code shorter than four digits).
    pub fn international(&self, dialed: &str) -> Option<String> {
        // Visual separators (RFC 3966) are allowed in what people type.
        let cleaned: String = dialed
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | ' ' | '(' | ')'))
            .collect();
        let (digits, international) = match cleaned.strip_prefix('+') {
            Some(rest) => (rest, true),
            None => match cleaned.strip_prefix(self.international_prefix.as_str()) {
                Some(rest) if !self.international_prefix.is_empty() => (rest, true),
                _ => (cleaned.as_str(), false),
            },
        };
        if digits.len() < 4 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if international {
            return Some(digits.to_owned());
        }
        let national = match digits.strip_prefix(self.national_prefix.as_str()) {
            Some(rest) if !self.national_prefix.is_empty() => rest,
            _ => digits,
        };
        Some(format!("{}{national}", self.home_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uk() -> DialingPlan {
        DialingPlan {
            home_code: "44".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
        }
    }

    #[test]
    fn dialed_numbers_become_e164() {
        let plan = uk();
        assert_eq!(
            plan.international("+53 7 123 4567").as_deref(),
            Some("5371234567")
        );
        assert_eq!(
            plan.international("0053712345").as_deref(),
            Some("53712345")
        );
        assert_eq!(
            plan.international("02079460000").as_deref(),
            Some("442079460000")
        );
        assert_eq!(plan.international("alice"), None);
        assert_eq!(plan.international("112"), None);
        let nanp = DialingPlan {
            home_code: "1".into(),
            international_prefix: "011".into(),
            national_prefix: "1".into(),
        };
        assert_eq!(
            nanp.international("18765551234").as_deref(),
            Some("18765551234")
        );
        assert_eq!(
            nanp.international("011447700900123").as_deref(),
            Some("447700900123")
        );
    }

    #[test]
    fn the_shipped_tables_load_and_match_the_longest_prefix() {
        let countries = countries(COUNTRY_CODES, "country_codes.txt").unwrap();
        assert!(countries.len() > 230, "{}", countries.len());
        let iso = |n: &str| countries.longest_match(n).map(|(_, c)| c.iso.clone());
        assert_eq!(iso("18765551234").as_deref(), Some("JM"));
        assert_eq!(iso("12125551234").as_deref(), Some("US"));
        assert_eq!(iso("77012345678").as_deref(), Some("KZ"));
        assert_eq!(iso("74951234567").as_deref(), Some("RU"));
        assert_eq!(iso("421212345678").as_deref(), Some("SK"));
        assert_eq!(iso("8816123456").as_deref(), Some("+881"));
        let risky = high_risk(HIGH_RISK, "high_risk.txt").unwrap();
        let class = |n: &str| risky.longest_match(n).map(|(p, r)| (p.to_owned(), r.risk));
        assert_eq!(class("5371234567"), Some(("53".into(), Risk::Irsf)));
        assert_eq!(class("979123456789"), Some(("979".into(), Risk::Premium)));
        assert_eq!(class("447700900123"), None);
        assert_eq!(class("18765551234"), Some(("1876".into(), Risk::Irsf)));
        assert_eq!(class("12125551234"), None);
    }

    #[test]
    fn bad_table_lines_name_file_and_line() {
        let err = high_risk("# x\n979 premium ok\n+53 irsf Cuba\n", "mine.txt").unwrap_err();
        assert!(err.starts_with("mine.txt:3:"), "{err}");
        let err = high_risk("979 gold\n", "mine.txt").unwrap_err();
        assert!(err.contains("expected irsf or premium"), "{err}");
    }
}
