//! Compile tests of `#[durable::function]`: what it accepts, and the errors it gives.
//! Each fail case pins its message in a `.stderr` file beside it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
