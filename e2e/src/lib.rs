//! Helpers for the end-to-end tests: a local mesh started with the built `keelctl` (and
//! stopped when the guard drops), a small HTTP/1.1 client with cookies, and Prometheus
//! queries. The tests drive Keel only through its binaries, as a user would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Where the built binaries are: `$KEEL_BIN_DIR`, else beside the test binary's directory
/// (`target/debug/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEEL_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `../shared` (Istio's samples and goldens).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The repository root (Keel's own samples).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a keelctl run printed.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A local mesh for one test: `keelctl up` in its own `$KEEL_HOME`; dropped, `keelctl down`.
#[derive(Debug)]
pub struct Mesh {
    pub home: PathBuf,
    pub proxy: String,
}

impl Mesh {
    pub fn up(proxy: &str) -> Result<Mesh> {
        Mesh::up_with_images(proxy, "images: []\n")
    }

    /// `keelctl up` with `images` as the user's image table (`$KEEL_HOME/images.yaml`).
    pub fn up_with_images(proxy: &str, images: &str) -> Result<Mesh> {
        let home = std::env::temp_dir().join(format!("keel-e2e-{proxy}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        std::fs::write(home.join("images.yaml"), images)?;
        let mesh = Mesh {
            home,
            proxy: proxy.to_owned(),
        };
        let mut up = mesh.keelctl(&["up", "--proxy", proxy])?;
        // Mixer's 42422 lies in Linux's ephemeral range: a client connection elsewhere that
        // used it holds it in TIME_WAIT for up to a minute (`cargo xtask test` reserves it).
        let deadline = std::time::Instant::now() + Duration::from_secs(75);
        while !up.ok && up.stderr.contains("is in use") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(5));
            up = mesh.keelctl(&["up", "--proxy", proxy])?;
        }
        if !up.ok {
            bail!("keelctl up failed:\n{}\n{}", up.stdout, up.stderr);
        }
        Ok(mesh)
    }

    pub fn keelctl(&self, args: &[&str]) -> Result<Output> {
        self.keelctl_env(args, &[])
    }

    pub fn keelctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let out = Command::new(bin_dir().join("keelctl"))
            .args(args)
            .env("KEEL_HOME", &self.home)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running keelctl {}", args.join(" ")))?;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A long-running keelctl (port-forward), killed when the guard drops; the first line
    /// of its output is returned once it is there.
    pub fn keelctl_background(&self, args: &[&str]) -> Result<(KillOnDrop, String)> {
        use std::io::BufRead;
        let mut child = Command::new(bin_dir().join("keelctl"))
            .args(args)
            .env("KEEL_HOME", &self.home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running keelctl {}", args.join(" ")))?;
        let stdout = child.stdout.take();
        let guard = KillOnDrop(child);
        let mut line = String::new();
        if let Some(out) = stdout {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        Ok((guard, line.trim_end().to_owned()))
    }

    /// `keelctl apply -f FILE`, which must succeed.
    pub fn apply(&self, file: &Path) -> Result<()> {
        let out = self.keelctl(&["apply", "-f", &file.display().to_string()])?;
        if !out.ok {
            bail!("keelctl apply -f {} failed: {}", file.display(), out.stderr);
        }
        Ok(())
    }

    pub fn delete(&self, file: &Path) -> Result<()> {
        let out = self.keelctl(&["delete", "-f", &file.display().to_string()])?;
        if !out.ok {
            bail!(
                "keelctl delete -f {} failed: {}",
                file.display(),
                out.stderr
            );
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Value> {
        let out = self.keelctl(&["status", "-o", "json"])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("keelctl status -o json: {}{}", out.stdout, out.stderr))
    }

    /// `host:port` of the ingress gateway.
    pub fn gateway(&self) -> Result<String> {
        let s = self.status()?;
        s["gateway_url"]
            .as_str()
            .map(|u| u.trim_start_matches("http://").to_owned())
            .ok_or_else(|| anyhow!("no gateway_url in the status"))
    }

    pub fn down(&self) -> Result<Output> {
        self.keelctl(&["down"])
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.down();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client with a cookie jar (enough for productpage's session).
#[derive(Debug, Default, Clone)]
pub struct Client {
    pub addr: String,
    pub cookies: Vec<(String, String)>,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        Client {
            addr: addr.to_owned(),
            cookies: Vec::new(),
        }
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.request("GET", path, headers, None)
    }

    /// Logs in as `user` the way the page's form does.
    pub fn login(&mut self, user: &str) -> Result<Response> {
        let body = format!("username={user}&passwd=");
        self.request(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(&body),
        )
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Response> {
        let started = Instant::now();
        let mut s = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let elapsed = started.elapsed();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("no end of headers in the answer to {method} {path}"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad status line in the answer to {method} {path}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            body = dechunk(&body)?;
        }
        for (k, v) in &headers {
            if k.eq_ignore_ascii_case("set-cookie")
                && let Some((name, value)) = v.split(';').next().and_then(|c| c.split_once('='))
            {
                self.cookies.retain(|(n, _)| n != name);
                if !value.is_empty() {
                    self.cookies.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed,
        })
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Polls `f` until it gives `Some`, or fails naming `what`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {:?} waiting for {what}{}",
                timeout,
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A PromQL instant query: the result vector as (labels, value) pairs.
pub fn prom_query(addr: &str, query: &str) -> Result<Vec<(Value, f64)>> {
    let r = Client::new(addr).get(&format!("/api/v1/query?query={}", url_encode(query)), &[])?;
    if r.status != 200 {
        bail!("prometheus answered {} to {query}: {}", r.status, r.body);
    }
    let v: Value = serde_json::from_str(&r.body)?;
    let results = v["data"]["result"]
        .as_array()
        .ok_or_else(|| anyhow!("no result in {}", r.body))?;
    Ok(results
        .iter()
        .map(|s| {
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse().ok())
                .unwrap_or(f64::NAN);
            (s["metric"].clone(), value)
        })
        .collect())
}

/// Which reviews version a product page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No stars.
    V1,
    /// Black stars.
    V2,
    /// Red stars.
    V3,
    /// The reviews error instead of reviews.
    ReviewsUnavailable,
}

pub fn variant(page: &str) -> Variant {
    if page.contains("Error fetching product reviews") {
        Variant::ReviewsUnavailable
    } else if page.contains("<font color=\"black\">") {
        Variant::V2
    } else if page.contains("<font color=\"red\">") {
        Variant::V3
    } else {
        Variant::V1
    }
}
