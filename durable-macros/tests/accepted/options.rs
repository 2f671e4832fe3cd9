//! Every option at once, with docs and visibility kept.
use std::time::Duration;

use durable::prelude::*;

/// Documented.
#[durable::function(
    name = "opts",
    version = 3,
    retry = Retry::Constant { delay: Duration::from_millis(5), max_attempts: 2 },
    timeout = Duration::from_secs(9),
)]
pub async fn with_options(_ctx: &mut Context, x: u8) -> durable::Result<u8> {
    Ok(x)
}

pub(crate) fn run() {
    assert_eq!(with_options.name(), "opts");
    assert_eq!(with_options.version(), 3);
    assert_eq!(
        Function::retry(&with_options),
        Some(Retry::Constant { delay: Duration::from_millis(5), max_attempts: 2 })
    );
    assert_eq!(Callable::timeout(&with_options), Some(Duration::from_secs(9)));
}
