//! The REST API (axum, JSON) under `/api/v1`, plus `/metrics`.
//!
//! Every route is listed in `ROUTES` (a test-only list), and a test keeps
//! that list equal to the OpenAPI document checked in at `docs/openapi.json`
//! (which the daemon serves at `/api/v1/openapi.json`). Handlers only parse and answer; the
//! work happens in [`Manager`] on the blocking pool (engine calls block).
//! Errors become HTTP answers in exactly one place (`IntoResponse for
//! DepotError`, using [`DepotError::status`]). With a token configured every
//! route but `/api/v1/health` requires `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::cluster::Node;
use crate::cluster::peer::{Forwarded, MAX_FORWARD_BODY, forward};
use crate::error::{DepotError, DepotResult};
use crate::manager::Manager;
use crate::model::*;

/// The OpenAPI document (served and checked in).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Every (method, path) the API serves, in OpenAPI path syntax (the test
/// below keeps it equal to the OpenAPI document; keep it equal to
/// [`router`] when adding a route).
#[cfg(test)]
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/health"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/vpools"),
    ("post", "/api/v1/vpools"),
    ("get", "/api/v1/vpools/{name}"),
    ("delete", "/api/v1/vpools/{name}"),
    ("get", "/api/v1/vms"),
    ("post", "/api/v1/vms"),
    ("get", "/api/v1/vms/{name}"),
    ("delete", "/api/v1/vms/{name}"),
    ("get", "/api/v1/vdisks"),
    ("post", "/api/v1/vdisks"),
    ("get", "/api/v1/vdisks/{name}"),
    ("delete", "/api/v1/vdisks/{name}"),
    ("post", "/api/v1/vdisks/{name}/resize"),
    ("post", "/api/v1/vdisks/{name}/template"),
    ("get", "/api/v1/vdisks/{name}/snapshots"),
    ("post", "/api/v1/vdisks/{name}/snapshots"),
    ("delete", "/api/v1/vdisks/{name}/snapshots/{snapshot}"),
    (
        "post",
        "/api/v1/vdisks/{name}/snapshots/{snapshot}/rollback",
    ),
    ("get", "/api/v1/routers"),
    ("post", "/api/v1/routers/{name}/drain"),
    ("post", "/api/v1/vdisks/{name}/move"),
    ("post", "/api/v1/vdisks/{name}/recover"),
    ("post", "/api/v1/vms/{name}/move"),
    ("get", "/metrics"),
];

#[derive(Clone)]
struct App {
    mgr: Arc<Manager>,
    node: Option<Arc<Node>>,
    token: Option<Arc<str>>,
}

/// Set on the response of an operation that must run on another router.
#[derive(Debug, Clone)]
struct RunsOn(String);

impl IntoResponse for DepotError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let runs_on = match &self {
            DepotError::Elsewhere { router } => Some(RunsOn(router.clone())),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code().into(),
            message: self.to_string(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(r) = runs_on {
            resp.extensions_mut().insert(r);
        }
        resp
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> DepotResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| DepotError::BadRequest(format!("invalid request body: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DepotResult<T> + Send + 'static,
) -> DepotResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DepotError::Internal(format!("operation task failed: {e}")))?
}

type Answer<T> = Result<axum::Json<T>, DepotError>;

async fn created<T: serde::Serialize>(r: DepotResult<T>) -> Result<Response, DepotError> {
    r.map(|v| (StatusCode::CREATED, axum::Json(v)).into_response())
}

/// The router with every route of `ROUTES`; in a cluster, `node` is this
/// router's membership (requests then wait for the cluster state to catch
/// up, and run on the router that owns what they change).
pub fn router(mgr: Arc<Manager>, node: Option<Arc<Node>>, token: Option<String>) -> Router {
    let app = App {
        mgr,
        node,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/vpools", get(list_vpools).post(create_vpool))
        .route("/api/v1/vpools/{name}", get(get_vpool).delete(delete_vpool))
        .route("/api/v1/vms", get(list_vms).post(create_vm))
        .route("/api/v1/vms/{name}", get(get_vm).delete(delete_vm))
        .route("/api/v1/vdisks", get(list_vdisks).post(create_vdisk))
        .route("/api/v1/vdisks/{name}", get(get_vdisk).delete(delete_vdisk))
        .route("/api/v1/vdisks/{name}/resize", post(resize_vdisk))
        .route("/api/v1/vdisks/{name}/template", post(set_template))
        .route(
            "/api/v1/vdisks/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/api/v1/vdisks/{name}/snapshots/{snapshot}",
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/api/v1/vdisks/{name}/snapshots/{snapshot}/rollback",
            post(rollback),
        )
        .route("/api/v1/routers", get(list_routers))
        .route("/api/v1/routers/{name}/drain", post(drain_router))
        .route("/api/v1/vdisks/{name}/move", post(move_vdisk))
        .route("/api/v1/vdisks/{name}/recover", post(recover_vdisk))
        .route("/api/v1/vms/{name}/move", post(move_vm))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            DepotError::NotFound {
                kind: "route",
                name: "this path".into(),
            }
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), cluster))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

/// In a cluster: waits until this router has applied the cluster state
/// as it is now (so the request decides on current state), then runs the
/// request here, or on the router that must run it.
async fn cluster(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(node) = app.node.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !path.starts_with("/api/v1/") || path == "/api/v1/health" || path == "/api/v1/openapi.json" {
        return next.run(req).await;
    }
    if let Err(e) = node.sync().await {
        return e.into_response();
    }
    let forwarded = req.extensions().get::<Forwarded>().is_some();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARD_BODY).await {
        Ok(b) => b,
        Err(e) => return DepotError::BadRequest(format!("request body: {e}")).into_response(),
    };
    let method = parts.method.clone();
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let resp = next
        .run(Request::from_parts(
            parts,
            axum::body::Body::from(body.clone()),
        ))
        .await;
    let Some(RunsOn(router)) = resp.extensions().get::<RunsOn>().cloned() else {
        return resp;
    };
    if forwarded {
        return DepotError::Unavailable(format!(
            "router {router} serves this now (it moved while the request was forwarded); retry"
        ))
        .into_response();
    }
    match forward(&node, &router, &method, &uri, &body).await {
        Ok((status, body)) => {
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    // Another router's request: its certificate authenticated it.
    let forwarded = req.extensions().get::<Forwarded>().is_some();
    if let Some(token) = &app.token
        && !forwarded
        && req.uri().path() != "/api/v1/health"
    {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return DepotError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(app): State<App>) -> Result<Response, DepotError> {
    let text = blocking(move || Ok(app.mgr.render_metrics())).await?;
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok((h, text).into_response())
}

async fn list_routers(State(app): State<App>) -> Answer<Vec<RouterView>> {
    blocking(move || app.mgr.list_routers())
        .await
        .map(axum::Json)
}

async fn drain_router(State(app): State<App>, Path(name): Path<String>) -> Answer<Vec<MoveReport>> {
    blocking(move || app.mgr.drain_router(&name))
        .await
        .map(axum::Json)
}

async fn move_vdisk(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<MoveReport> {
    let req: MoveRequest = parse(&body)?;
    blocking(move || app.mgr.move_vdisk(&name, &req.to, req.force))
        .await
        .map(axum::Json)
}

async fn recover_vdisk(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<RecoverReport> {
    let req: RecoverRequest = parse(&body)?;
    blocking(move || app.mgr.recover_vdisk(&name, req.accept_loss))
        .await
        .map(axum::Json)
}

async fn move_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<Vec<MoveReport>> {
    let req: MoveRequest = parse(&body)?;
    blocking(move || app.mgr.move_vm(&name, &req.to))
        .await
        .map(axum::Json)
}

async fn list_vpools(State(app): State<App>) -> Answer<Vec<VPoolView>> {
    blocking(move || Ok(app.mgr.list_vpools()))
        .await
        .map(axum::Json)
}

async fn create_vpool(State(app): State<App>, body: Bytes) -> Result<Response, DepotError> {
    let req: CreateVPool = parse(&body)?;
    created(blocking(move || app.mgr.create_vpool(req)).await).await
}

async fn get_vpool(State(app): State<App>, Path(name): Path<String>) -> Answer<VPoolView> {
    blocking(move || app.mgr.get_vpool(&name))
        .await
        .map(axum::Json)
}

async fn delete_vpool(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<StatusCode, DepotError> {
    blocking(move || app.mgr.delete_vpool(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_vms(State(app): State<App>) -> Answer<Vec<VmView>> {
    blocking(move || Ok(app.mgr.list_vms()))
        .await
        .map(axum::Json)
}

async fn create_vm(State(app): State<App>, body: Bytes) -> Result<Response, DepotError> {
    let req: CreateVm = parse(&body)?;
    created(blocking(move || app.mgr.create_vm(req)).await).await
}

async fn get_vm(State(app): State<App>, Path(name): Path<String>) -> Answer<VmView> {
    blocking(move || app.mgr.get_vm(&name))
        .await
        .map(axum::Json)
}

async fn delete_vm(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<StatusCode, DepotError> {
    blocking(move || app.mgr.delete_vm(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct VDiskFilter {
    vm: Option<String>,
}

async fn list_vdisks(
    State(app): State<App>,
    Query(q): Query<VDiskFilter>,
) -> Answer<Vec<VDiskView>> {
    blocking(move || app.mgr.list_vdisks(q.vm.as_deref()))
        .await
        .map(axum::Json)
}

async fn create_vdisk(State(app): State<App>, body: Bytes) -> Result<Response, DepotError> {
    let req: CreateVDisk = parse(&body)?;
    created(blocking(move || app.mgr.create_vdisk(req)).await).await
}

async fn get_vdisk(State(app): State<App>, Path(name): Path<String>) -> Answer<VDiskView> {
    blocking(move || app.mgr.get_vdisk(&name))
        .await
        .map(axum::Json)
}

async fn delete_vdisk(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<StatusCode, DepotError> {
    blocking(move || app.mgr.delete_vdisk(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_vdisk(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<VDiskView> {
    let req: Resize = parse(&body)?;
    let size = req.size.bytes().map_err(DepotError::BadRequest)?;
    blocking(move || app.mgr.resize_vdisk(&name, size))
        .await
        .map(axum::Json)
}

async fn set_template(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<VDiskView> {
    let req: SetTemplate = parse(&body)?;
    blocking(move || app.mgr.set_template(&name, req.template))
        .await
        .map(axum::Json)
}

async fn list_snapshots(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Answer<Vec<SnapshotView>> {
    blocking(move || app.mgr.list_snapshots(&name))
        .await
        .map(axum::Json)
}

async fn create_snapshot(
    State(app): State<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DepotError> {
    let req: CreateSnapshot = if body.is_empty() {
        CreateSnapshot::default()
    } else {
        parse(&body)?
    };
    created(blocking(move || app.mgr.create_snapshot(&name, req.name)).await).await
}

async fn delete_snapshot(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode, DepotError> {
    blocking(move || app.mgr.delete_snapshot(&name, &snapshot)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode, DepotError> {
    blocking(move || app.mgr.rollback(&name, &snapshot)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                if method != "parameters" {
                    documented.insert((method.clone(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            documented, served,
            "docs/openapi.json and api::ROUTES differ"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
