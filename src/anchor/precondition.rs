//! Preconditions (RFC 3312, RFC 4032) in Warden's own answers (prompts to a caller): Warden's
//! relay is ready at once, so its side of every precondition is met as it answers.

/// The precondition lines of Warden's answer to an m= line whose offer had these `curr`
/// and `des` values (`qos local none`, `qos mandatory local sendrecv`): Warden's local
/// status sendrecv, the caller's as it said, the caller's desires mirrored (its local is
/// Warden's remote), and a request to confirm once the caller's own side is ready. Empty
/// when the offer asked for none.
pub fn answer_lines(curr: &[String], des: &[String]) -> Vec<String> {
    if des.is_empty() {
        return Vec::new();
    }
    let status_of = |dir: &str| {
        curr.iter().find_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            (f.len() == 3 && f[0] == "qos" && f[1] == dir).then(|| f[2].to_owned())
        })
    };
    let caller_local = status_of("local").unwrap_or_else(|| "none".into());
    let mut out = vec![
        "a=curr:qos local sendrecv".to_owned(),
        format!("a=curr:qos remote {caller_local}"),
    ];
    for d in des {
        let f: Vec<&str> = d.split_whitespace().collect();
        if f.len() != 4 {
            continue;
        }
        let mirrored = match f[2] {
            "local" => "remote",
            "remote" => "local",
            other => other,
        };
        out.push(format!("a=des:{} {} {mirrored} {}", f[0], f[1], f[3]));
    }
    if caller_local != "sendrecv" {
        out.push("a=conf:qos remote sendrecv".to_owned());
    }
    out
}

/// The description with `o=` session version `version` (RFC 3264 8: a changed answer in a
/// later offer/answer exchange counts up).
pub fn with_version(sdp: &str, version: u64) -> String {
    sdp.lines()
        .map(|line| match line.strip_prefix("o=") {
            Some(origin) => {
                let mut f: Vec<String> = origin.split_whitespace().map(str::to_owned).collect();
                if let Some(slot) = f.get_mut(2) {
                    *slot = version.to_string();
                }
                format!("o={}\r\n", f.join(" "))
            }
            None => format!("{line}\r\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warden_is_ready_at_once_and_asks_the_caller_to_confirm() {
        let curr = vec!["qos local none".to_owned(), "qos remote none".to_owned()];
        let des = vec![
            "qos mandatory local sendrecv".to_owned(),
            "qos optional remote sendrecv".to_owned(),
        ];
        assert_eq!(
            answer_lines(&curr, &des),
            vec![
                "a=curr:qos local sendrecv",
                "a=curr:qos remote none",
                "a=des:qos mandatory remote sendrecv",
                "a=des:qos optional local sendrecv",
                "a=conf:qos remote sendrecv",
            ]
        );
        let ready = vec!["qos local sendrecv".to_owned()];
        assert!(
            !answer_lines(&ready, &des)
                .iter()
                .any(|l| l.starts_with("a=conf"))
        );
        assert!(answer_lines(&curr, &[]).is_empty());
        let sdp = with_version("v=0\r\no=warden 7 1 IN IP4 127.0.0.1\r\n", 2);
        assert!(sdp.contains("o=warden 7 2 IN"));
    }
}
