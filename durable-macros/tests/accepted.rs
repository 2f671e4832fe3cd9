//! What `#[durable::function]` accepts: each module compiles as part of this test
//! crate, and what it checks runs as a test. (What it refuses is in `ui.rs`.)

mod accepted {
    pub(crate) mod arguments;
    pub(crate) mod options;
    pub(crate) mod recursion;
    pub(crate) mod remote_named;
    pub(crate) mod shadowing;
}

#[test]
fn zero_one_and_three_arguments() {
    accepted::arguments::run();
}

#[test]
fn every_option_at_once() {
    accepted::options::run();
}

#[test]
fn a_function_calls_itself() {
    accepted::recursion::run();
}

#[test]
fn a_remote_function_is_named_without_a_stub() {
    accepted::remote_named::run();
}

#[test]
fn names_may_be_shadowed() {
    accepted::shadowing::run();
}
