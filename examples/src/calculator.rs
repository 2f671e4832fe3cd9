//! The calculator: a parser for `(1 + 2) * (3 - 4)`, and durable functions that
//! evaluate the tree, one durable call per sub-expression and per operator.

use std::fmt;

use durable::prelude::*;
use serde::{Deserialize, Serialize};

/// An arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (integer division, rounding toward zero)
    Div,
}

impl Op {
    /// The symbol the operator's durable function is registered under.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
        }
    }
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expr {
    /// An integer.
    Num(i64),
    /// An operator applied to two operands.
    Op(Op, Box<Expr>, Box<Expr>),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(n) if *n < 0 => write!(f, "({n})"),
            Expr::Num(n) => write!(f, "{n}"),
            Expr::Op(op, l, r) => write!(f, "({l} {} {r})", op.symbol()),
        }
    }
}

/// A malformed expression: what is wrong, and the column (from 1) where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// The column, counted in characters from 1.
    pub column: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.column)
    }
}

impl std::error::Error for ParseError {}

/// Parses integers, `+ - * /`, parentheses, unary minus and spaces, with the usual
/// precedence; operators of one precedence associate to the left.
///
/// ```
/// use durable_examples::calculator::parse;
/// assert_eq!(parse("(1 + 2) * (3 - 4)").unwrap().to_string(), "((1 + 2) * (3 - 4))");
/// assert_eq!(parse("1 +").unwrap_err().to_string(), "expected a number or '(' but the expression ended at column 4");
/// ```
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let mut parser = Parser { chars: input.chars().collect(), pos: 0 };
    let expr = parser.expr()?;
    parser.skip_spaces();
    match parser.peek() {
        None => Ok(expr),
        Some(')') => Err(parser.error("unmatched ')'")),
        Some(c) => Err(parser.error(&format!("expected an operator but found {c:?}"))),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError { message: message.to_owned(), column: self.pos + 1 }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.term()?;
        loop {
            self.skip_spaces();
            let op = match self.peek() {
                Some('+') => Op::Add,
                Some('-') => Op::Sub,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            lhs = Expr::Op(op, Box::new(lhs), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.factor()?;
        loop {
            self.skip_spaces();
            let op = match self.peek() {
                Some('*') => Op::Mul,
                Some('/') => Op::Div,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            lhs = Expr::Op(op, Box::new(lhs), Box::new(self.factor()?));
        }
    }

    fn factor(&mut self) -> Result<Expr, ParseError> {
        self.skip_spaces();
        match self.peek() {
            Some('(') => {
                let open = self.pos;
                self.pos += 1;
                let inner = self.expr()?;
                self.skip_spaces();
                if self.peek() == Some(')') {
                    self.pos += 1;
                    Ok(inner)
                } else {
                    let what = self.peek().map_or("the expression ended".to_owned(), |c| format!("found {c:?}"));
                    Err(ParseError {
                        message: format!("expected ')' to close the '(' at column {} but {what}", open + 1),
                        column: self.pos + 1,
                    })
                }
            }
            Some('-') => {
                self.pos += 1;
                match self.factor()? {
                    Expr::Num(n) => Ok(Expr::Num(-n)),
                    e => Ok(Expr::Op(Op::Sub, Box::new(Expr::Num(0)), Box::new(e))),
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits: String = self.chars[start..self.pos].iter().collect();
                digits.parse().map(Expr::Num).map_err(|_| ParseError {
                    message: format!("the number {digits} does not fit in 64 bits"),
                    column: start + 1,
                })
            }
            Some(c) => Err(self.error(&format!("expected a number or '(' but found {c:?}"))),
            None => Err(self.error("expected a number or '(' but the expression ended")),
        }
    }
}

fn arithmetic(op: Op, x: i64, y: i64) -> durable::Result<i64> {
    let result = match op {
        Op::Add => x.checked_add(y),
        Op::Sub => x.checked_sub(y),
        Op::Mul => x.checked_mul(y),
        Op::Div if y == 0 => return Err(Error::terminal(format!("division by zero: {x} / {y}"))),
        Op::Div => x.checked_div(y),
    };
    result.ok_or_else(|| Error::terminal(format!("overflow: {x} {} {y} does not fit in 64 bits", op.symbol())))
}

/// `x + y`
#[durable::function(name = "+")]
pub async fn add(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    arithmetic(Op::Add, x, y)
}

/// `x - y`
#[durable::function(name = "-")]
pub async fn sub(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    arithmetic(Op::Sub, x, y)
}

/// `x * y`
#[durable::function(name = "*")]
pub async fn mul(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    arithmetic(Op::Mul, x, y)
}

/// `x / y`; division by zero is a terminal error, never retried.
#[durable::function(name = "/")]
pub async fn div(_ctx: &mut Context, x: i64, y: i64) -> durable::Result<i64> {
    arithmetic(Op::Div, x, y)
}

/// Evaluates an expression, as in the seed: the operands go to group `exp` with `rfi`
/// (the left preferring worker `lhs`, the right `rhs`), and the operator is called by
/// its symbol with `rfc` on group `ops`, so this process needs no stub of it.
#[durable::function(name = "=")]
pub async fn clc(ctx: &mut Context, expr: Expr) -> durable::Result<i64> {
    match expr {
        Expr::Num(n) => Ok(n),
        Expr::Op(op, lhs, rhs) => {
            let px = ctx.rfi(clc, *lhs).target("poll://any@exp/lhs").await?;
            let py = ctx.rfi(clc, *rhs).target("poll://any@exp/rhs").await?;
            let (x, y) = (px.await?, py.await?);
            ctx.rfc(Remote::<(i64, i64), i64>::named(op.symbol()), (x, y)).target("poll://any@ops").await
        }
    }
}

/// The roles of the calculator's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starts evaluations; runs the root `=` of each.
    Client,
    /// Group `exp`, worker `lhs`.
    Lhs,
    /// Group `exp`, worker `rhs`.
    Rhs,
    /// Group `ops`: the operators.
    Ops,
}

impl Role {
    /// The role for `--group G [--pid P]`.
    pub fn parse(group: &str, pid: Option<&str>) -> Result<Role, String> {
        match (group, pid) {
            ("exp", Some("lhs")) => Ok(Role::Lhs),
            ("exp", Some("rhs")) => Ok(Role::Rhs),
            ("exp", other) => Err(format!("group exp needs --pid lhs or --pid rhs, not {other:?}")),
            ("ops", _) => Ok(Role::Ops),
            ("client", _) => Ok(Role::Client),
            (other, _) => {
                Err(format!("unknown group {other:?}: the groups are exp (with --pid lhs or rhs), ops and client"))
            }
        }
    }

    /// A runtime for this role over `store`, holding tasks on leases of `lease`.
    pub fn runtime(self, store: std::sync::Arc<dyn Store>, lease: std::time::Duration) -> durable::Result<Durable> {
        let builder = Durable::builder().store(store).lease(lease);
        match self {
            Role::Client => builder.group("client").pid("client").register(clc),
            Role::Lhs => builder.group("exp").pid("lhs").register(clc),
            Role::Rhs => builder.group("exp").pid("rhs").register(clc),
            Role::Ops => builder.group("ops").pid("ops").register(add).register(sub).register(mul).register(div),
        }
        .build()
    }
}

/// Every role in this process, over one store: the client first.
pub fn all_roles(store: std::sync::Arc<dyn Store>) -> durable::Result<Vec<Durable>> {
    let lease = std::time::Duration::from_secs(30);
    [Role::Client, Role::Lhs, Role::Rhs, Role::Ops].into_iter().map(|role| role.runtime(store.clone(), lease)).collect()
}
