//! The store conformance suite on the in-memory store and, with the
//! `redis` feature, on the Redis store at 127.0.0.1:6379 (each case under
//! a namespace of its own).

mod memory {
    dramaturg_core::store_conformance!(async { dramaturg::MemoryStore::new() });
}
