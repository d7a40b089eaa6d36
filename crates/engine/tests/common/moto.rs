//! A moto_server (S3) started on 127.0.0.1 for a test, with a bucket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use depot_engine::BackendConfig;

/// A running moto_server, killed on drop.
pub struct Moto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Starts `DEPOT_TEST_MOTO` with bucket `depot-test`; `None` (after a loud
/// SKIPPED message naming `test`) when the variable is not set.
pub fn start(test: &str) -> Option<Moto> {
    let Ok(bin) = std::env::var("DEPOT_TEST_MOTO") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: DEPOT_TEST_MOTO is not set (see tests/s3.rs). ***\n"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let moto = Moto { child, port };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resp = http(
        port,
        &format!(
            "PUT /depot-test HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
        "{resp}"
    );
    Some(moto)
}

impl Moto {
    /// The backend config of bucket `depot-test`.
    pub fn backend(&self) -> BackendConfig {
        BackendConfig::S3 {
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            bucket: "depot-test".into(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            allow_http: true,
        }
    }
}
