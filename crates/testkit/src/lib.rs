//! Test support shared by Depot's crate tests and system tests: real
//! peers on 127.0.0.1, each a child process of the test, stopped when
//! dropped.
//!
//! - [`etcd`]: an etcd cluster of N members (Debian's etcd-server 3.4).
//! - [`moto`]: moto_server, a faithful S3 server, with a bucket.
//!
//! Dev-only: nothing here is part of the product.

pub mod etcd;
pub mod moto;

use std::net::TcpListener;

pub use etcd::EtcdCluster;
pub use moto::Moto;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
