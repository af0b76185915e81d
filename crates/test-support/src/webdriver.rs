//! A small W3C WebDriver client over HTTP, driving headless Chromium through chromedriver (the
//! Debian packages `chromium` and `chromium-driver`), for the console's browser tests and its
//! screenshots.
//!
//! [`Browser::start`] runs chromedriver on a free port in a process group of its own; dropping
//! the browser kills that group (chromedriver and the Chromium it started), so a failing test
//! leaves no browser behind.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// The key of an element reference in the WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long [`Browser::wait_for`] and start-up wait.
const WAIT: Duration = Duration::from_secs(30);

/// What to install when the browser is missing.
pub const PACKAGES: &str = "the Debian packages chromium and chromium-driver \
    (apt-get install -y chromium chromium-driver)";

/// One headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Option<tokio::process::Child>,
    profile: PathBuf,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width` × `height` CSS pixels. Fails with a
    /// message naming the packages when either program is missing.
    pub async fn start(width: u32, height: u32) -> Result<Browser, String> {
        let chromium = which("chromium")
            .ok_or_else(|| format!("chromium is not installed: install {PACKAGES}"))?;
        let driver_bin = which("chromedriver")
            .ok_or_else(|| format!("chromedriver is not installed: install {PACKAGES}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for chromedriver: {e}"))?
            .port();
        let mut cmd = tokio::process::Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        let driver = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", driver_bin.display()))?;
        let profile =
            std::env::temp_dir().join(format!("sagad-chromium-{}-{port}", std::process::id()));
        let mut b = Browser {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .map_err(|e| e.to_string())?,
            session: String::new(),
            driver: Some(driver),
            profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = b
                .http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(r) = ready
                && r.await.is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("chromedriver did not become ready on port {port}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--hide-scrollbars", format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", b.profile.display())]
            }
        } } });
        let v = b
            .call("POST", &format!("{base}/session"), Some(caps))
            .await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("chromedriver gave no session: {v}"))?;
        b.session = format!("{base}/session/{id}");
        Ok(b)
    }

    async fn call(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("{method} {url}: unreadable answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {url}: {status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    /// A command on this session; panics with the driver's error (a test failure).
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("{}{path}", self.session), body)
            .await
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn title(&self) -> String {
        self.cmd("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Every element matching the CSS selector now.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_owned(),
            })
            .collect()
    }

    /// The first element matching the CSS selector, waiting for it to appear.
    pub async fn wait_for(&self, css: &str) -> Element<'_> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                let source = self.source().await;
                let tail: String = source.chars().take(3000).collect();
                panic!(
                    "no element {css:?} appeared within {WAIT:?} at {}; the page: {tail}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The session's cookies as the driver reports them (`name`, `value`, `httpOnly`,
    /// `sameSite`, …), HttpOnly ones included.
    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("webdriver: screenshot is not base64: {e}"))
    }

    /// Resizes the window (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Ends the session and stops the browser and its driver.
    pub async fn quit(mut self) {
        let _ = self.call("DELETE", &self.session.clone(), None).await;
        if let Some(mut d) = self.driver.take() {
            kill_group(&d);
            let _ = d.wait().await;
        }
    }
}

/// Kills chromedriver's process group: the driver and every Chromium process it started.
fn kill_group(driver: &tokio::process::Child) {
    if let Some(pid) = driver.id() {
        // SAFETY: kill(2) with a negative pid signals the process group the driver leads (it was
        // spawned with process_group(0)); no memory is involved.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(d) = &self.driver {
            kill_group(d);
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Element<'_> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub async fn click(&self) {
        self.browser.cmd("POST", &self.path("/click"), None).await;
    }

    /// Types `text` into the element.
    pub async fn send_keys(&self, text: &str) {
        self.browser
            .cmd("POST", &self.path("/value"), Some(json!({ "text": text })))
            .await;
    }

    /// The element's rendered text.
    pub async fn text(&self) -> String {
        self.browser
            .cmd("GET", &self.path("/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An attribute's value, if the element has it.
    pub async fn attr(&self, name: &str) -> Option<String> {
        self.browser
            .cmd("GET", &self.path(&format!("/attribute/{name}")), None)
            .await
            .as_str()
            .map(str::to_owned)
    }
}
