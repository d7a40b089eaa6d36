//! moto_server (PyPI `moto[server]`) on 127.0.0.1: the most faithful S3
//! semantics available here (conditional PUTs, multipart, ranges). Found
//! through `DEPOT_TEST_MOTO`, else `~/.cache/depot-tools/moto/bin/moto_server`
//! where scripts/install-deps.sh installs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running moto_server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
}

/// Where moto_server is, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DEPOT_TEST_MOTO") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("depot-tools/moto/bin/moto_server");
    p.is_file().then_some(p)
}

impl Moto {
    /// Starts moto_server on a free port; panics with how to install it if
    /// it is missing.
    pub fn start() -> Moto {
        let bin = binary().expect("moto_server not found: run scripts/install-deps.sh");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let m = Moto { child, port };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect moto");
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "creating bucket {name}: {out}"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
