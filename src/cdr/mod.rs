//! Call detail records: one per call, written when it starts and updated as it goes, through
//! a journal (so a crash or a database outage loses none) into SQLite or PostgreSQL.
//!
//! The core fills a [`Record`] per call and hands out a copy at each step with a higher
//! `rev`; the driver appends it to the [`journal::Journal`]; the [`writer::Writer`] stores
//! it. Every write is an upsert guarded by `rev`, so replaying the journal is harmless.

pub mod journal;
pub mod record;
pub mod store;
pub mod writer;

pub use record::Record;
