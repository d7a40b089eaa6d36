//! The cluster crate's one error type. Callers branch on it: `Conflict`
//! becomes HTTP 409, `NotFound` 404, `Unavailable` 503 with the reason, and
//! `Fenced` stops a router's I/O; the daemon maps it in one place.

/// What can go wrong talking to the cluster state.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or did not answer in time (no quorum,
    /// every endpoint down, timeouts). Management changes stop; I/O already
    /// being served goes on (see docs/cluster.md, "Losing etcd").
    #[error("cluster state (etcd) is unavailable: {0}")]
    Unavailable(String),
    /// A compare-and-swap lost: someone changed the object since it was
    /// read, or created it first. Nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A router of this name is already running in the cluster.
    #[error("{0}")]
    AlreadyRunning(String),
    /// This router's lease lapsed or its ownership was taken over: it must
    /// not acknowledge I/O or change the backend for the object.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Bytes read from etcd that do not parse or are out of bounds. etcd
    /// content is untrusted input like any other.
    #[error("invalid cluster record {key}: {reason}")]
    Corrupt {
        /// The key whose value is bad.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration the cluster cannot use (bad endpoint, TLS files).
    #[error("cluster configuration: {0}")]
    Config(String),
}

/// Result alias for cluster calls.
pub type ClusterResult<T> = Result<T, ClusterError>;

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        match &e {
            etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                ClusterError::Config(e.to_string())
            }
            etcd_client::Error::GRpcStatus(s) => {
                ClusterError::Unavailable(format!("{} ({:?})", s.message(), s.code()))
            }
            _ => ClusterError::Unavailable(e.to_string()),
        }
    }
}

impl ClusterError {
    /// Whether the error means etcd itself could not be reached or had no
    /// quorum (as opposed to a refused change).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable(_))
    }
}
