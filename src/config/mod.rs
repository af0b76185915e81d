//! Configuration: the flags and environment variables (`args`), and the settings built from them.

mod args;

pub use args::*;
