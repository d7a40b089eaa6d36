//! Router-to-router transport of a Depot cluster.
//!
//! Everything one router says to another (the hand-over of un-shipped data
//! during a move, and any other call) goes over mutual TLS with
//! certificates the cluster's CA issued to each router when it joined, in
//! bounded frames. A process that is not a router of the cluster can
//! neither connect nor be connected to.
//!
//! Modules, in dependency order: [`error`]; [`frame`] (the sans-IO frame
//! codec, fuzzed); [`pki`] (the CA, router certificates, TLS configs);
//! [`conn`] (the server loop and the client). The protocol is specified in
//! docs/peer-protocol.md.

pub mod conn;
pub mod error;
pub mod frame;
pub mod pki;

pub use conn::{Admit, Gate, Handler, PeerClient, Refusal, Reply, ReplyFuture, serve};
pub use error::{PeerError, PeerResult};
pub use pki::{CaRecord, RouterIdentity};
