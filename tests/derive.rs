//! Compile-time tests of `#[derive(Actor)]`: what compiles, and the errors
//! (with their positions) for what does not.

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
