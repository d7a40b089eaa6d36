//! Test support shared by Depot's crate tests and system tests: real
//! peers on 127.0.0.1, each a child process of the test, stopped when
//! dropped.
//!
//! - [`etcd`]: an etcd cluster of N members (Debian's etcd-server 3.4).
//! - [`moto`]: moto_server, a faithful S3 server, with a bucket.
//! - [`garage`]: Garage, a real self-hosted S3 server (on demand).
//! - [`S3Server`]: whichever of the two `DEPOT_TEST_S3` names.
//!
//! Dev-only: nothing here is part of the product.

pub mod etcd;
pub mod garage;
pub mod moto;

use std::net::TcpListener;

pub use etcd::EtcdCluster;
pub use garage::Garage;
pub use moto::Moto;

/// The S3 server of a test: moto_server, or Garage with
/// `DEPOT_TEST_S3=garage` (a run outside CI against a real self-hosted
/// store).
#[derive(Debug)]
pub enum S3Server {
    /// moto_server (the default; what CI runs).
    Moto(Moto),
    /// Garage.
    Garage(Garage),
}

impl S3Server {
    /// Starts the server `DEPOT_TEST_S3` names (`moto` or `garage`).
    pub fn start() -> S3Server {
        match std::env::var("DEPOT_TEST_S3").as_deref() {
            Ok("garage") => S3Server::Garage(Garage::start()),
            Ok("moto") | Err(_) => S3Server::Moto(Moto::start()),
            Ok(other) => panic!("DEPOT_TEST_S3={other}: expected moto or garage"),
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        match self {
            S3Server::Moto(m) => m.endpoint(),
            S3Server::Garage(g) => g.endpoint(),
        }
    }

    /// Creates a bucket the credentials below may use.
    pub fn bucket(&self, name: &str) {
        match self {
            S3Server::Moto(m) => m.bucket(name),
            S3Server::Garage(g) => g.bucket(name),
        }
    }

    /// The access key id (moto takes any).
    pub fn access_key(&self) -> &str {
        match self {
            S3Server::Moto(_) => "test",
            S3Server::Garage(g) => g.access_key(),
        }
    }

    /// The secret key.
    pub fn secret_key(&self) -> &str {
        match self {
            S3Server::Moto(_) => "test",
            S3Server::Garage(g) => g.secret_key(),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
