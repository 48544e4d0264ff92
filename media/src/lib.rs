//! Warden's media engine: the RTP/RTCP relay, codecs and transcoding, prompts, and DTMF
//! (RFC 4733) reading and writing. It knows nothing of SIP: callers open streams, say where each leg's party is, read stats.

pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod mixer;
pub mod ports;
pub mod prompt;
pub mod record;
pub mod relay;
pub mod srtp;
pub mod stats;
#[doc(hidden)]
pub mod sys; // public for the relay benchmark's baseline forwarder (the same calls) and SIP's UDP receive
pub mod transcode;
mod worker;

pub use ports::{PortPair, PortPool, PortsExhausted};
pub use relay::{
    EventFormat, EventSink, Latching, MediaError, MediaEvent, Playback, Relay, RelayConfig,
    RelayTotals, Remote, Side, StreamId, StreamStats,
};
pub use srtp::{SrtpKeys, SrtpSetting, Suite};
pub use stats::LegStats;
pub use transcode::{LegCodec, Transcoding};
