//! Compile-time tests of `#[derive(Actor)]`: what compiles, and the errors
//! (with their positions) for what does not.
//!
//! They live in this crate rather than in the `dramaturg` facade so that
//! trybuild's own project depends only on what this crate's manifest names:
//! the facade with its default features, serde and trybuild. From the facade,
//! `cargo test --all-features` would also make it build the Redis and
//! RabbitMQ brokers, TLS and the facade's dev-dependencies, which no case
//! uses (trybuild builds every dependency twice, in a target directory of its
//! own: that was most of the time of the whole test suite).

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
