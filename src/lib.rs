//! Warden: a SIP back-to-back user agent application server with a media relay.
//! The binary (`main.rs`) is a thin CLI over [`server::run`].

pub mod anchor;
pub mod api;
pub mod call;
pub mod cdr;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod ctl;
pub mod dialplan;
pub mod dns;
pub mod e164;
pub mod events;
pub mod guard;
pub mod media;
pub mod prompts;
pub mod recording;
pub mod registrar;
pub mod screening;
pub mod server;
pub mod shard;
pub mod sip;
