//! What this router answers to other routers (over mutual TLS,
//! depot_peer), and how it forwards an API request to the router that must
//! run it.
//!
//! Forwarding: a management request that concerns a vDisk runs on the
//! vDisk's owner (a new vDisk: on the router of its VM's other vDisks). The
//! router that received it sends the request as it came (method, path,
//! query, body) over the peer connection; the owner runs it through its own
//! API routes, marked as forwarded (the peer's certificate authenticated
//! it, so no bearer token; and it is never forwarded again), and the answer
//! goes back as it is.

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode};
use depot_peer::{Handler, Reply, ReplyFuture};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::Node;
use crate::error::{DepotError, DepotResult};

/// Largest API request body forwarded between routers.
pub const MAX_FORWARD_BODY: usize = 1 << 20;

/// Marks a request that came from another router.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// An API request sent to another router.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiCall {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
}

/// The answer to an [`ApiCall`] (the body travels as the frame's body).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiAnswer {
    /// HTTP status.
    pub status: u16,
}

/// Operations other routers ask of this one besides API calls (the
/// target side of a live move), run on a blocking thread.
pub trait Ops: Send + Sync + 'static {
    /// Runs `op` for router `from`; its JSON answer or a refusal message.
    fn run(
        &self,
        from: &str,
        op: &str,
        msg: serde_json::Value,
        body: &[u8],
    ) -> Result<serde_json::Value, String>;
}

/// Serves other routers' requests.
pub struct PeerHandler {
    api: axum::Router,
    ops: Arc<dyn Ops>,
}

impl PeerHandler {
    /// A handler that runs forwarded API calls through `api` and every
    /// other operation through `ops`.
    pub fn new(api: axum::Router, ops: Arc<dyn Ops>) -> Arc<Self> {
        Arc::new(PeerHandler { api, ops })
    }
}

impl Handler for PeerHandler {
    fn handle(&self, from: &str, op: &str, msg: serde_json::Value, body: Bytes) -> ReplyFuture {
        let api = self.api.clone();
        let ops = self.ops.clone();
        let from = from.to_string();
        let op = op.to_string();
        Box::pin(async move {
            match op.as_str() {
                "api" => run_api(api, &from, msg, body).await,
                _ => {
                    let r = tokio::task::spawn_blocking(move || ops.run(&from, &op, msg, &body))
                        .await
                        .map_err(|e| e.to_string())?;
                    r.map(|v| (v, Bytes::new()))
                }
            }
        })
    }
}

async fn run_api(api: axum::Router, from: &str, msg: serde_json::Value, body: Bytes) -> Reply {
    let call: ApiCall = serde_json::from_value(msg).map_err(|e| e.to_string())?;
    let method = Method::from_bytes(call.method.as_bytes()).map_err(|e| e.to_string())?;
    if !call.uri.starts_with("/api/v1/") {
        return Err(format!("{} is not an API path", call.uri));
    }
    let mut req = Request::builder()
        .method(method)
        .uri(&call.uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    req.extensions_mut().insert(Forwarded);
    tracing::debug!(router = from, uri = %call.uri, "running a forwarded API call");
    let resp = api.oneshot(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), MAX_FORWARD_BODY * 16)
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        serde_json::to_value(ApiAnswer { status }).map_err(|e| e.to_string())?,
        bytes,
    ))
}

/// Sends an API request to `router`; its status and body.
pub async fn forward(
    node: &Node,
    router: &str,
    method: &Method,
    uri: &str,
    body: &[u8],
) -> DepotResult<(StatusCode, Bytes)> {
    let peer = node.peer(router)?;
    let call = ApiCall {
        method: method.as_str().to_string(),
        uri: uri.to_string(),
    };
    let (ans, body): (ApiAnswer, Bytes) = peer
        .call("api", &call, body, std::time::Duration::from_secs(600))
        .await
        .map_err(DepotError::from)?;
    let status = StatusCode::from_u16(ans.status)
        .map_err(|e| DepotError::Internal(format!("router {router}: bad status: {e}")))?;
    Ok((status, body))
}
