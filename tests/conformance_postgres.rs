//! The broker conformance suite on the real PostgreSQL at 127.0.0.1:5432,
//! each case in a schema of its own, dropped when the case ends.

#![cfg(feature = "postgres")]

#[path = "support/guarded.rs"]
mod guarded;
#[path = "support/postgres.rs"]
#[allow(dead_code)] // The suite needs the broker that drops its schema only.
mod postgres;

dramaturg_core::broker_conformance!(postgres::dropping());
