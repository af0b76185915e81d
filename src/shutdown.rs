//! Shutdown on request: a token cancelled on SIGTERM or SIGINT, for the daemon and the tools built
//! on the library.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on SIGTERM or SIGINT. Needs a running Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        info!("shutdown requested: finishing in-flight steps");
        t.cancel();
    });
    token
}
