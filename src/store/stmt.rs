//! Statements assembled from parts.
//!
//! The hot statements (a saga's start, a step's outcome) are each one data-modifying statement
//! made of parts, each from the file of its table: the saga row with its fence, the events and
//! their webhook deliveries, the step history, the booking, the inventory claim, the NOTIFYs. A
//! part is a value that owns its SQL text and its binds: made from the values it writes, it
//! pushes them onto the statement's [`Binds`] and keeps the [`Param`]s (`$n`) its text refers to.
//! Parameter numbers come from the counter, in the order the parts are pushed; no part knows
//! where another one's parameters start. A part's text may refer to another part's parameters
//! (every part refers to the saga id), given to it when the statement renders it.
//!
//! A statement's text depends on its shape (which parts it has), never on the values bound: each
//! shape's text is rendered once and kept ([`Text`]), so that every execution of a shape sends the
//! same text (the connection's prepared-statement cache hits) and the hot path only binds. Debug
//! builds render the text again on every execution and check it is the one kept. Values reach
//! the database only as binds: a text is made of the parts' SQL and placeholders.
//!
//! `src/store/snapshots/` holds every shape's text and parameter count ([`super::snapshots`]).

use std::fmt;
use std::sync::OnceLock;

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, Postgres, Type};

/// A parameter of a statement: `$n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param(usize);

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

/// The values of a statement being assembled, numbered as they are pushed.
#[derive(Default)]
pub(crate) struct Binds {
    args: PgArguments,
    count: usize,
    /// The first value that could not be encoded: the statement is then not run.
    error: Option<BoxDynError>,
}

impl Binds {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Binds `value` as the next parameter.
    pub(crate) fn push<'t, T: Encode<'t, Postgres> + Type<Postgres>>(&mut self, value: T) -> Param {
        self.count += 1;
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        Param(self.count)
    }
}

/// A statement ready to run: its text and its values.
pub(crate) struct Statement {
    text: &'static str,
    binds: Binds,
}

impl Statement {
    /// The statement as a query; an error if a value could not be encoded.
    pub(crate) fn query(
        self,
    ) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>, sqlx::Error> {
        match self.binds.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok(sqlx::query_with(self.text, self.binds.args)),
        }
    }

    #[cfg(test)]
    pub(crate) fn text(&self) -> &'static str {
        self.text
    }

    /// How many parameters it binds.
    #[cfg(test)]
    pub(crate) fn params(&self) -> usize {
        self.binds.count
    }
}

/// The text of one statement shape, rendered on first use and kept.
pub(crate) struct Text(OnceLock<String>);

impl Text {
    pub(crate) const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// The statement of this shape with `binds`; `render` gives the text of the parts that
    /// pushed them (called on first use, and on every use in debug builds to check that the text
    /// does not depend on the values).
    pub(crate) fn with(&'static self, binds: Binds, render: impl Fn() -> String) -> Statement {
        let text = self.0.get_or_init(&render).as_str();
        debug_assert_eq!(
            text,
            render(),
            "a statement's text changed with its values: a shape is missing"
        );
        Statement { text, binds }
    }
}
