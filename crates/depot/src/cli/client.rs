//! The REST API client of the CLI: one `reqwest` client with the bearer
//! token and an optional CA, typed calls, and the mapping of failures to
//! one-line errors.
//!
//! Invariants: a non-2xx answer becomes `<message> (HTTP <status>)` with the
//! message from the API's error body (or the raw body); an unreachable
//! daemon becomes `cannot reach the depot API at <url>: <root cause>`. Path
//! segments are percent-escaped so a bad name reaches the daemon (and is
//! refused) instead of another route.

use anyhow::{Context, bail};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::args::ClientArgs;
use crate::model::ErrorBody;

/// A JSON request body.
pub type Body = Option<serde_json::Value>;

/// `v` as a request body.
pub fn body<T: Serialize>(v: &T) -> anyhow::Result<Body> {
    serde_json::to_value(v)
        .map(Some)
        .context("encoding the request")
}

/// A connection to the daemon's API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for `--api`, `--token` and `--ca`.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600));
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("parsing {}", ca.display()))?,
            );
        }
        Ok(Client {
            http: b.build().context("building the HTTP client")?,
            base: args.api.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        })
    }

    /// One call; `None` when the answer has no body.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> anyhow::Result<Option<T>> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the depot API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_slice(&bytes).context("unexpected answer from the daemon")?,
        ))
    }

    /// A call answering one object.
    pub async fn one<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> anyhow::Result<T> {
        self.call(method, path, body)
            .await?
            .context("empty answer from the daemon")
    }

    /// A `GET` answering a list (an empty answer is an empty list).
    pub async fn many<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        Ok(self
            .call(Method::GET, path, None)
            .await?
            .unwrap_or_default())
    }

    /// A call whose answer carries nothing to show.
    pub async fn done(&self, method: Method, path: &str, body: Body) -> anyhow::Result<()> {
        let _: Option<serde_json::Value> = self.call(method, path, body).await?;
        Ok(())
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// `s` as one path segment.
pub fn enc(s: &str) -> String {
    // Names are validated to [a-z0-9.-] by the daemon; escape anything else
    // so a bad name reaches it (and is refused) instead of another route.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'@') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(enc("a b"), "a%20b");
        assert_eq!(enc("d@s"), "d@s");
        assert_eq!(enc("../x"), "..%2Fx");
    }
}
