//! SIP: messages (a facade over sipx-sip), transports (UDP, TCP, TLS), the transaction layer
//! and dialogs.
//! Outside this module nothing names the parser crate's types.

pub mod dialog;
pub mod dtmf_relay;
pub mod framing;
pub mod message;
pub mod probe;
pub mod reliable;
pub mod salvage;
pub mod session_timer;
pub mod status;
pub mod tls;
pub mod tolerate;
pub mod transaction;
pub mod transport;

/// Where `needle` first occurs in `haystack` (framing, salvaging and repairing messages all
/// look for the end of a line or of a head).
pub(crate) fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
