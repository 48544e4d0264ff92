//! One dialog as Warden sees it (RFC 3261 12): the identifiers, the peer's target and route
//! set, and the CSeq, with the requests Warden sends into it built from them.
//!
//! Each leg of a call is one `Leg`: the caller's (Warden as UAS) and each callee branch's
//! (Warden as UAC). What Warden stamps on its own requests comes in as [`Stamp`].

use super::message::{Malformed, Method, NameAddr, Request, Response, Uri};
use super::transport::Destination;

/// One dialog as Warden sees it: enough to send requests into it.
#[derive(Debug, Clone)]
pub struct Leg {
    pub call_id: String,
    /// Our address as it appears in From (UAC) or To (UAS), without tag.
    pub local_uri: String,
    pub local_tag: String,
    pub remote_uri: String,
    pub remote_tag: Option<String>,
    /// The peer's Contact: Request-URI of in-dialog requests.
    pub target: String,
    /// Route set (RFC 3261 12.1): Record-Route values in the order our requests carry them.
    pub route: Vec<String>,
    pub cseq: u32,
    /// Where in-dialog requests go.
    pub dest: Destination,
}

/// What Warden puts in every request of its own: its Via (with a fresh branch), its
/// Contact for the leg's transport, and its User-Agent.
pub struct Stamp<'a> {
    pub via: String,
    pub contact: String,
    pub user_agent: &'a str,
}

impl Leg {
    /// The next request in this dialog. The CSeq grows, unless `cseq` is given (ACK and
    /// CANCEL take their INVITE's). None when the target is not a URI.
    pub fn request(&mut self, method: Method, cseq: Option<u32>, stamp: Stamp) -> Option<Request> {
        let seq = match cseq {
            Some(s) => s,
            None => {
                self.cseq += 1;
                self.cseq
            }
        };
        let uri = Uri::parse(&self.target).ok()?;
        let to = match &self.remote_tag {
            Some(t) => format!("{};tag={t}", self.remote_uri),
            None => self.remote_uri.clone(),
        };
        let mut builder = Request::builder(method, &uri)
            .header("Via", &stamp.via)
            .max_forwards(70);
        for route in &self.route {
            builder = builder.header("Route", route);
        }
        builder
            .header(
                "From",
                &format!("{};tag={}", self.local_uri, self.local_tag),
            )
            .header("To", &to)
            .header("Call-ID", &self.call_id)
            .cseq(seq)
            .header("Contact", &stamp.contact)
            .header("User-Agent", stamp.user_agent)
            .build()
            .ok()
    }

    /// The peer's 2xx to our INVITE (CSeq `invite_cseq`) set the dialog up (RFC 3261
    /// 12.1.2): its tag, its Contact as the target, the Record-Route reversed as the route
    /// set, and the CSeq our next request counts from.
    pub fn confirm(&mut self, ok: &Response, invite_cseq: u32) {
        self.remote_tag = ok.to_tag();
        if let Some(target) = ok.contact_uri() {
            self.target = target;
        }
        self.route = route_set(ok.address_list("Record-Route"), true);
        // A PRACK or an early UPDATE may have counted past the INVITE's CSeq already.
        self.cseq = self.cseq.max(invite_cseq);
    }

    /// A provisional with a tag made an early dialog (RFC 3261 12.1.2): requests into it
    /// (PRACK, UPDATE) go to its Contact along its Record-Route, reversed.
    pub fn early(&mut self, provisional: &Response) {
        let Some(tag) = provisional.to_tag() else {
            return;
        };
        self.remote_tag = Some(tag);
        if let Some(target) = provisional.contact_uri() {
            self.target = target;
        }
        if provisional.has_header("Record-Route") {
            self.route = route_set(provisional.address_list("Record-Route"), true);
        }
    }
}

/// Record-Route values as Route header values; a UAS keeps their order (RFC 3261 12.1.1),
/// a UAC reverses them (12.1.2).
pub fn route_set(values: Result<Vec<NameAddr>, Malformed>, reverse: bool) -> Vec<String> {
    let mut route: Vec<String> = values
        .map(|list| list.iter().map(|a| format!("<{}>", a.uri)).collect())
        .unwrap_or_default();
    if reverse {
        route.reverse();
    }
    route
}

/// A From or To header value without its `;tag=` parameter (outside `<>`), the rest kept.
pub fn strip_tag(header: &str) -> String {
    let close = header.rfind('>').map(|i| i + 1).unwrap_or(0);
    let (addr, params) = header.split_at(close);
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    format!("{addr}{}", kept.join(";")).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_tag_keeps_other_params() {
        assert_eq!(strip_tag("<sip:a@b;lr>;tag=x;foo=1"), "<sip:a@b;lr>;foo=1");
        assert_eq!(strip_tag("\"A\" <sip:a@b>"), "\"A\" <sip:a@b>");
    }
}
