//! ENUM (RFC 6116): the DNS name for an E.164 number, and turning the NAPTR records found
//! there into SIP URIs (RFC 3402 substitution expressions). Pure; the driver does the DNS.

/// `+41 44 123 45 67` under `e164.arpa` -> `7.6.5.4.3.2.1.4.4.1.4.e164.arpa.`; None when
/// the text holds no digits.
pub fn domain(number: &str, suffix: &str) -> Option<String> {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let mut name = String::with_capacity(digits.len() * 2 + suffix.len() + 1);
    for d in digits.iter().rev() {
        name.push(*d);
        name.push('.');
    }
    name.push_str(suffix.trim_matches('.'));
    name.push('.');
    Some(name)
}

/// One NAPTR record, as far as ENUM cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub regexp: String,
}

/// The SIP URIs the records give for `number`, best first: terminal ("u") records whose
/// service is E2U+sip, by order then preference, their regexp applied to the number in
/// its `+digits` form. Records Warden cannot use are skipped.
pub fn sip_uris(number: &str, records: &[Naptr]) -> Vec<String> {
    let aus = format!(
        "+{}",
        number
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
    );
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("u"))
        .filter(|r| {
            r.services
                .split(':')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("E2U"))
                && r.services
                    .split(':')
                    .skip(1)
                    .any(|s| s.eq_ignore_ascii_case("sip"))
                || r.services.eq_ignore_ascii_case("E2U+sip")
                || r.services.eq_ignore_ascii_case("sip+E2U")
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    usable
        .iter()
        .filter_map(|r| substitute(&r.regexp, &aus))
        .filter(|uri| uri.starts_with("sip:") || uri.starts_with("sips:"))
        .collect()
}

/// Apply an RFC 3402 substitution expression (`!ere!replacement!flags`, any delimiter) to
/// `subject`; `\1`..`\9` in the replacement are the groups.
fn substitute(expression: &str, subject: &str) -> Option<String> {
    let delimiter = expression.chars().next()?;
    let parts: Vec<&str> = expression[delimiter.len_utf8()..]
        .split(delimiter)
        .collect();
    let (pattern, replacement, flags) = match parts.as_slice() {
        [p, r, f] => (*p, *r, *f),
        _ => return None,
    };
    let insensitive = flags.contains('i');
    let regex = regex::RegexBuilder::new(pattern)
        .case_insensitive(insensitive)
        .build()
        .ok()?;
    let captures = regex.captures(subject)?;
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(d @ '0'..='9') => {
                    let group = d as usize - '0' as usize;
                    out.push_str(captures.get(group).map_or("", |m| m.as_str()));
                }
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, preference: u16, services: &str, regexp: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: "u".into(),
            services: services.into(),
            regexp: regexp.into(),
        }
    }

    #[test]
    fn the_domain_of_a_number() {
        assert_eq!(
            domain("+41 44 123-45-67", "e164.arpa").as_deref(),
            Some("7.6.5.4.3.2.1.4.4.1.4.e164.arpa.")
        );
        assert_eq!(
            domain("4930", "e164.example.net.").as_deref(),
            Some("0.3.9.4.e164.example.net.")
        );
        assert_eq!(domain("alice", "e164.arpa"), None);
    }

    #[test]
    fn sip_records_by_order_and_preference_with_their_regexp() {
        let records = vec![
            naptr(10, 20, "E2U+sip", "!^.*$!sip:backup@example.net!"),
            naptr(10, 10, "E2U+sip", "!^\\+41(.*)$!sip:0\\1@gw.example.net!"),
            naptr(5, 10, "E2U+mailto", "!^.*$!mailto:info@example.net!"),
            naptr(20, 10, "E2U+sip", "/^.*$/tel:+41441234567/"),
            Naptr {
                flags: "".into(),
                ..naptr(1, 1, "E2U+sip", "!^.*$!sip:nonterminal@example.net!")
            },
        ];
        assert_eq!(
            sip_uris("+41441234567", &records),
            vec![
                "sip:0441234567@gw.example.net".to_owned(),
                "sip:backup@example.net".to_owned(),
            ]
        );
        // RFC 6116 style services ("E2U+sip" and the "E2U:sip" spelling) both count.
        let colon = vec![naptr(1, 1, "E2U:sip", "!^.*$!sip:a@b!")];
        assert_eq!(sip_uris("1", &colon), vec!["sip:a@b".to_owned()]);
        // A broken expression is skipped, not fatal.
        assert!(sip_uris("1", &[naptr(1, 1, "E2U+sip", "!(!x!")]).is_empty());
    }
}
