//! Typed errors of the management layer, and the one place they map to HTTP
//! status codes ([`DepotError::status`]) and to the API's error body.
//!
//! Engine errors are classified here too (`From<EngineError>`), so handlers
//! never inspect engine types.

use depot_engine::EngineError;

/// Everything a management operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DepotError {
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// vPool, VM, vDisk, snapshot.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An object with that name already exists.
    #[error("{kind} {name:?} already exists")]
    Conflict {
        /// vPool, VM, vDisk, snapshot.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Refused because something still needs the object (the message says
    /// what).
    #[error("{0}")]
    InUse(String),
    /// The request is malformed or not applicable.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Storage is temporarily unavailable; retrying may succeed.
    #[error("temporarily unavailable, retry later: {0}")]
    Unavailable(String),
    /// Another router changed what this change was based on (a lost
    /// compare-and-swap); nothing was written.
    #[error("{0}; nothing was changed, retry")]
    Changed(String),
    /// The cluster state (etcd) cannot be reached: management changes stop,
    /// I/O already being served goes on.
    #[error(
        "management changes are unavailable while the cluster state (etcd) is unreachable: {0}"
    )]
    ClusterDown(String),
    /// The operation must run on another router of the cluster (the
    /// vDisk's owner); the API forwards it there, so clients never see it.
    #[error("router {router:?} serves this; the request goes there")]
    Elsewhere {
        /// The router to run it on.
        router: String,
    },
    /// Anything else (local I/O, corrupt state).
    #[error("{0}")]
    Internal(String),
}

/// Result alias.
pub type DepotResult<T> = Result<T, DepotError>;

impl DepotError {
    /// The HTTP status of this error (the only such mapping).
    pub fn status(&self) -> u16 {
        match self {
            DepotError::NotFound { .. } => 404,
            DepotError::Conflict { .. } => 409,
            DepotError::InUse(_) => 409,
            DepotError::BadRequest(_) => 400,
            DepotError::Unauthorized => 401,
            DepotError::Unavailable(_) => 503,
            DepotError::Changed(_) => 409,
            DepotError::ClusterDown(_) => 503,
            DepotError::Elsewhere { .. } => 503,
            DepotError::Internal(_) => 500,
        }
    }

    /// Machine-readable class for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            DepotError::NotFound { .. } => "not_found",
            DepotError::Conflict { .. } => "conflict",
            DepotError::InUse(_) => "in_use",
            DepotError::BadRequest(_) => "bad_request",
            DepotError::Unauthorized => "unauthorized",
            DepotError::Unavailable(_) => "unavailable",
            DepotError::Changed(_) => "changed",
            DepotError::ClusterDown(_) => "cluster_unavailable",
            DepotError::Elsewhere { .. } => "elsewhere",
            DepotError::Internal(_) => "internal",
        }
    }

    /// Shorthand for a local I/O failure with context.
    pub fn io(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        DepotError::Internal(format!("{context}: {e}"))
    }
}

impl From<EngineError> for DepotError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::VolumeNotFound(name) => DepotError::NotFound {
                kind: "vDisk",
                name,
            },
            EngineError::VolumeExists(name) => DepotError::Conflict {
                kind: "vDisk",
                name,
            },
            EngineError::SnapshotNotFound(name) => DepotError::NotFound {
                kind: "snapshot",
                name,
            },
            EngineError::SnapshotExists(name) => DepotError::Conflict {
                kind: "snapshot",
                name,
            },
            EngineError::HasClones(what) => DepotError::InUse(format!(
                "{what} has clones that depend on it; delete the clones first"
            )),
            EngineError::InvalidArgument(m) => DepotError::BadRequest(m),
            EngineError::ReadOnly => {
                DepotError::BadRequest("the vDisk is read-only (a template?)".into())
            }
            EngineError::Fenced(m) => DepotError::Unavailable(format!(
                "this router no longer owns the vDisk ({m}); retry, the request goes to its owner"
            )),
            e if e.is_retryable() => DepotError::Unavailable(e.to_string()),
            e => DepotError::Internal(e.to_string()),
        }
    }
}

impl From<depot_cluster::ClusterError> for DepotError {
    fn from(e: depot_cluster::ClusterError) -> Self {
        use depot_cluster::ClusterError as C;
        match e {
            C::Unavailable(m) => DepotError::ClusterDown(m),
            C::Conflict(m) => DepotError::Changed(m),
            C::NotFound(m) => DepotError::BadRequest(m),
            C::AlreadyRunning(m) | C::Fenced(m) => DepotError::InUse(m),
            e @ (C::Corrupt { .. } | C::Config(_)) => DepotError::Internal(e.to_string()),
        }
    }
}

impl From<depot_peer::PeerError> for DepotError {
    fn from(e: depot_peer::PeerError) -> Self {
        use depot_peer::PeerError as P;
        match e {
            P::Refused(m) => DepotError::BadRequest(m),
            e @ P::Unreachable { .. } => DepotError::Unavailable(e.to_string()),
            e => DepotError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let e: DepotError = EngineError::HasClones("snapshot \"s\"".into()).into();
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("clones"));
        let e: DepotError = EngineError::SnapshotNotFound("x".into()).into();
        assert_eq!(e.status(), 404);
        let e: DepotError = EngineError::BackendUnavailable("down".into()).into();
        assert_eq!(e.status(), 503);
        let e: DepotError = EngineError::InvalidArgument("bad".into()).into();
        assert_eq!(e.status(), 400);
    }
}
