//! The calculator parses with clear errors and evaluates durably, one promise per
//! sub-expression and per operator.

use std::sync::Arc;

use durable::{Error, MemoryStore, State, Store};
use durable_examples::calculator::{self, Expr, Op, clc, parse};

#[test]
fn parse_errors_say_what_and_where() {
    for (input, message, column) in [
        ("1 +", "expected a number or '(' but the expression ended", 4),
        ("(1 + 2", "expected ')' to close the '(' at column 1 but the expression ended", 7),
        ("1 + 2)", "unmatched ')'", 6),
        ("2 $ 3", "expected an operator but found '$'", 3),
        ("x", "expected a number or '(' but found 'x'", 1),
        ("99999999999999999999", "the number 99999999999999999999 does not fit in 64 bits", 1),
        ("", "expected a number or '(' but the expression ended", 1),
    ] {
        let e = parse(input).unwrap_err();
        assert_eq!((e.message.as_str(), e.column), (message, column), "{input:?}");
    }
}

#[test]
fn precedence_and_associativity() {
    assert_eq!(parse("1 - 2 - 3").unwrap().to_string(), "((1 - 2) - 3)");
    assert_eq!(parse("1 + 2 * 3").unwrap().to_string(), "(1 + (2 * 3))");
    assert_eq!(parse(" -(4) / 2").unwrap().to_string(), "((-4) / 2)");
    assert_eq!(parse("-(1+1)").unwrap(), Expr::Op(Op::Sub, Box::new(Expr::Num(0)), Box::new(parse("1+1").unwrap())));
}

/// A balanced expression of `ops` operators over 1..: its value by plain arithmetic.
fn balanced(ops: usize, next: &mut i64) -> (String, i64) {
    if ops == 0 {
        *next += 1;
        return (next.to_string(), *next);
    }
    let left = (ops - 1) / 2;
    let (ls, lv) = balanced(left, next);
    let (rs, rv) = balanced(ops - 1 - left, next);
    match ops % 3 {
        0 => (format!("({ls} + {rs})"), lv + rv),
        1 => (format!("({ls} - {rs})"), lv - rv),
        _ => (format!("({ls} * {rs})"), lv * rv),
    }
}

#[tokio::test(start_paused = true)]
async fn evaluates_the_seed_and_a_63_operator_expression() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runtimes = calculator::all_roles(store.clone()).unwrap();
    let durable = &runtimes[0];
    let seed = durable.run("seed", clc, parse("(1 + 2) * (3 - 4)").unwrap()).await.unwrap();
    assert_eq!(seed.await.unwrap(), -3);
    // "=" ran for the root and both operands on group exp, then "*" on group ops.
    let mul = store.get("seed.3").await.unwrap().unwrap();
    assert!(matches!(&mul.param, durable::Param::Call { func, .. } if func == "*"));
    assert_eq!(store.task("seed.1").await.unwrap().unwrap().target.to_string(), "poll://any@exp/lhs");
    assert_eq!(store.task("seed.2").await.unwrap().unwrap().target.to_string(), "poll://any@exp/rhs");
    assert_eq!(store.task("seed.3").await.unwrap().unwrap().target.to_string(), "poll://any@ops");

    let (text, value) = balanced(63, &mut 0);
    assert_eq!(text.matches(['+', '-', '*']).count(), 63);
    let handle = durable.run("big", clc, parse(&text).unwrap()).await.unwrap();
    assert_eq!(handle.await.unwrap(), value);
}

#[tokio::test(start_paused = true)]
async fn division_by_zero_rejects_the_operator_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runtimes = calculator::all_roles(store.clone()).unwrap();
    let durable = &runtimes[0];
    let started = tokio::time::Instant::now();
    let error = durable.run("div", clc, parse("7 / (2 - 2)").unwrap()).await.unwrap().await.unwrap_err();
    assert!(
        matches!(&error, Error::Application { message, terminal: true } if message == "division by zero: 7 / 0"),
        "{error:?}"
    );
    assert_eq!(store.get("div.3").await.unwrap().unwrap().state, State::Rejected);
    assert!(store.get("div.3.r1").await.unwrap().is_none(), "a terminal error is not retried");
    assert!(started.elapsed().as_secs() < 1, "no backoff was waited");
}

#[test]
fn the_binary_prints_the_result_and_traces_the_calls() {
    let dir = std::env::temp_dir().join(format!("durable-calculator-trace-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calculator"))
        .args(["--store", &dir.display().to_string(), "--trace", "(1 + 2) * (3 - 4)"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "-3\n");
    for expected in ["on poll://any@exp/lhs", "on poll://any@exp/rhs", "on poll://any@ops", "*([3,-1])", "Resolved -3"]
    {
        assert!(stderr.contains(expected), "the trace lacks {expected:?}:\n{stderr}");
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calculator"))
        .args(["--store", &dir.display().to_string(), "2 * (3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at column 7"));
    assert!(!dir.exists(), "a malformed expression opens no store");
}
