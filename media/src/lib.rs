//! Warden's media engine: RTP/RTCP relay, codecs, transcoding, prompts and mixing.
//! It knows nothing of SIP. Today it owns the RTP port pool; the relay arrives next.

pub mod ports;

pub use ports::{PortPair, PortPool, PortsExhausted};
