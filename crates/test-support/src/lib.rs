//! What sagad's integration tests (`tests/it/`) and its benchmark (`crates/sagad-bench`) share:
//! the peer sagad calls over HTTP, recorded, a WebDriver client for the console's browser
//! tests, and a private `nats-server -js` for the relay. It depends on nothing of sagad.

mod nats;
mod receiver;
pub mod webdriver;

pub use nats::NatsServer;
pub use receiver::{Hit, Receiver, Reply};
pub use webdriver::Browser;
