//! Shared test harnesses, one concern each: `process` (the real `warden` binary on
//! loopback), `ua` (a test SIP phone over real sockets), `tls_ca` (a test CA), and `core`
//! (the signalling core on virtual time, no sockets).
#![allow(dead_code)]

pub mod core;
pub mod process;
pub mod tls_ca;
pub mod ua;

#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use tls_ca::*;
#[allow(unused_imports)]
pub use ua::*;
