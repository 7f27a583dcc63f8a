//! The broker conformance suite on the in-memory broker.

dramaturg_core::broker_conformance!(async { dramaturg::MemoryBroker::new() });
