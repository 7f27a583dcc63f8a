//! The broker conformance suite on the SQLite broker, each case on a file
//! of its own, deleted when the case ends.

#![cfg(feature = "sqlite")]

#[path = "support/guarded.rs"]
mod guarded;
#[path = "support/sqlite.rs"]
#[allow(dead_code)] // The suite needs the broker that deletes its file only.
mod sqlite;

dramaturg_core::broker_conformance!(sqlite::removing());
