//! Compile tests of `#[durable::function]`: the errors it gives. Each case pins its
//! message in a `.stderr` file beside it. Only checked, never built, so that the test
//! stays fast; what the attribute accepts is compiled and run in `accepted.rs`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}
