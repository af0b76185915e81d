//! A `nats-server -js` of its own: a free port on 127.0.0.1 and a private store directory,
//! started from the machine's binary (Debian's `nats-server` package). The relay tests and the
//! relay benchmark run against it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running (or stopped) `nats-server -js`; killed and its store removed on drop.
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it answers JetStream requests.
    pub async fn start() -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port for nats-server: {e}"))?;
        let dir = std::env::temp_dir().join(format!(
            "sagad-nats-{}-{port}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        let mut nats = NatsServer {
            port,
            dir,
            child: None,
        };
        nats.run().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store (after [`NatsServer::stop`]).
    pub async fn run(&mut self) -> Result<(), String> {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run nats-server ({e}); install the Debian package: apt-get install -y nats-server"
                )
            })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.answers_jetstream().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "nats-server on port {} did not answer JetStream requests within 20 s",
                    self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// JetStream's account info request is answered once JetStream runs.
    async fn answers_jetstream(&self) -> bool {
        let Ok(client) = async_nats::connect(self.url()).await else {
            return false;
        };
        client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .is_ok_and(|m| m.payload.starts_with(b"{"))
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let _ = child.wait().await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A few random bits for the store directory's name, from the clock.
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
