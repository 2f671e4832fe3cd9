//! A function of another process is named without a stub.
use durable::prelude::*;

pub(crate) fn run() {
    let add = Remote::<(i64, i64), i64>::named("+").version(2);
    assert_eq!(add.name(), "+");
    assert_eq!(Callable::version(&add), 2);
    let _: <Remote<(i64, i64), i64> as Callable>::Output = 3i64;
}
