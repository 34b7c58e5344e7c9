//! A real browser for end-to-end tests: Debian's headless Chromium driven over the W3C
//! WebDriver protocol by its `chromedriver`, which this fixture starts on a free loopback
//! port with a profile of its own and stops when dropped. Only the handful of commands the
//! dashboard tests need are here: navigate, find, click, type, run a script, screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::wait::{free_loopback_port, wait_for, wait_until};

/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    http: reqwest::blocking::Client,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
}

/// An element of the page, as WebDriver names it.
#[derive(Debug, Clone)]
pub struct Element(String);

/// Where Debian puts Chromium and its driver; `None` when they are not installed.
pub fn chromium_paths() -> Option<(PathBuf, PathBuf)> {
    let browser = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    Some((browser, driver))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` × `height` pixels that trusts
    /// any certificate (the test server's CA is its own).
    pub fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let (chromium, chromedriver) = chromium_paths()
            .context("Chromium is not installed: apt-get install chromium chromium-driver")?;
        let port = free_loopback_port()?;
        let profile = tempfile::Builder::new()
            .prefix("offload-chromium-")
            .tempdir()?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
            _profile: profile,
        };
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        })
        .context("chromedriver did not become ready")?;
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run",
                        "--disable-background-networking", "--disable-extensions",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                        format!("--window-size={width},{height}"),
                    ],
                },
            }},
        });
        let created = browser.command(reqwest::Method::POST, "/session", Some(capabilities))?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?
            .to_owned();
        Ok(browser)
    }

    fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let request = self.http.request(method, &url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request
            .send()
            .with_context(|| format!("WebDriver {path}"))?;
        let status = response.status();
        let value: Value = response.json().context("WebDriver answer is not JSON")?;
        if !status.is_success() {
            bail!(
                "WebDriver {path}: {} {}",
                value["value"]["error"],
                value["value"]["message"]
            );
        }
        Ok(value["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/url"),
            Some(json!({"url": url})),
        )?;
        Ok(())
    }

    /// Resizes the window.
    pub fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )?;
        Ok(())
    }

    /// The first element matching a CSS selector, if there is one now.
    pub fn find(&self, css: &str) -> anyhow::Result<Option<Element>> {
        let found = self.command(
            reqwest::Method::POST,
            &self.session_path("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(found
            .as_array()
            .and_then(|all| all.first())
            .and_then(|e| e[ELEMENT_KEY].as_str())
            .map(|id| Element(id.to_owned())))
    }

    /// Waits up to `timeout` for an element matching `css` to exist.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        wait_for(timeout, Duration::from_millis(100), || {
            self.find(css).ok().flatten()
        })
        .with_context(|| format!("no element matches {css}"))
    }

    /// Clicks an element.
    pub fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/click", element.0)),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Types `text` into an element.
    pub fn type_into(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/value", element.0)),
            Some(json!({"text": text})),
        )?;
        Ok(())
    }

    /// An element's rendered text.
    pub fn text(&self, element: &Element) -> anyhow::Result<String> {
        let text = self.command(
            reqwest::Method::GET,
            &self.session_path(&format!("/element/{}/text", element.0)),
            None,
        )?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns
    /// what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Saves a PNG of the window at `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = self.command(
            reqwest::Method::GET,
            &self.session_path("/screenshot"),
            None,
        )?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.command(reqwest::Method::DELETE, &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
