//! What sagad's integration tests (`tests/it/`) and its benchmark (`crates/sagad-bench`) share:
//! the peer sagad calls over HTTP, recorded. It depends on nothing of sagad.

mod receiver;

pub use receiver::{Hit, Receiver, Reply};
