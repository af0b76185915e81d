//! What sagad's integration tests (`tests/it/`) and its benchmark (`crates/sagad-bench`) share:
//! the peer sagad calls over HTTP, recorded, and a WebDriver client for the console's browser
//! tests. It depends on nothing of sagad.

mod receiver;
pub mod webdriver;

pub use receiver::{Hit, Receiver, Reply};
pub use webdriver::Browser;
