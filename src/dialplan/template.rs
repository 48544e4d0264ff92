//! Action arguments with substitutions: `$1`..`$9` (numbered captures), `${name}` (named
//! captures and call variables), `$$` for a dollar sign. Parsed once at load.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// What substitutions read: numbered captures and named values (captures, variables).
#[derive(Debug, Default, Clone)]
pub struct Values {
    pub groups: Vec<String>,
    pub named: HashMap<String, String>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                literal.push(c);
                continue;
            }
            let piece = match chars.peek().copied() {
                Some('$') => {
                    chars.next();
                    literal.push('$');
                    continue;
                }
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    Piece::Group(d as usize - '0' as usize)
                }
                Some('{') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(format!("bad substitution ${{{name}}} in {text:?}"));
                    }
                    Piece::Var(name)
                }
                _ => return Err(format!("a lone $ in {text:?} (write $$ for a dollar sign)")),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The text with substitutions made; an absent capture or variable is empty.
    pub fn render(&self, values: &Values) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(i) => out.push_str(values.groups.get(*i).map_or("", String::as_str)),
                Piece::Var(name) => out.push_str(values.named.get(name).map_or("", String::as_str)),
            }
        }
        out
    }

    /// The template with every substitution replaced by `filler` (where a bridge target
    /// goes does not depend on the number dialled in its user part).
    pub fn render_filled(&self, filler: &str) -> String {
        self.0
            .iter()
            .map(|piece| match piece {
                Piece::Text(t) => t.as_str(),
                Piece::Group(_) | Piece::Var(_) => filler,
            })
            .collect()
    }

    /// The text of a template without substitutions.
    pub fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_groups_names_and_dollars() {
        let t = Template::parse("sip:${user}@gw.example.net;x=$1$$").expect("parses");
        let values = Values {
            groups: vec!["0041".into(), "41".into()],
            named: [("user".to_owned(), "alice".to_owned())].into(),
        };
        assert_eq!(t.render(&values), "sip:alice@gw.example.net;x=41$");
        assert_eq!(Template::parse("$7").expect("ok").render(&values), "");
        assert_eq!(
            Template::parse("plain").expect("ok").literal(),
            Some("plain")
        );
        assert!(Template::parse("${").is_err());
        assert!(Template::parse("${a b}").is_err());
        assert!(Template::parse("cost $").is_err());
    }
}
