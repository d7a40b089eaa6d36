//! The peer transport's error type.

/// What can go wrong between routers.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached, or the connection broke.
    #[error("router {router}: {reason}")]
    Unreachable {
        /// The router we talked to (or tried to).
        router: String,
        /// What happened.
        reason: String,
    },
    /// The other side is not a router of this cluster (certificate not
    /// issued by the cluster, or issued to another name).
    #[error("not a router of this cluster: {0}")]
    NotAuthorized(String),
    /// A frame broke the protocol (length, encoding). The connection is
    /// closed; nothing else is affected.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The request was understood and refused by the peer; its message.
    #[error("{0}")]
    Refused(String),
    /// Certificate authority or key material problems.
    #[error("certificates: {0}")]
    Pki(String),
}

/// Result alias for peer calls.
pub type PeerResult<T> = Result<T, PeerError>;
