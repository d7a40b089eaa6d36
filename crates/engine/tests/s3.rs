//! The S3 path against a real S3-compatible server (moto_server) started on
//! 127.0.0.1 by the test. Set `DEPOT_TEST_MOTO=/path/to/moto_server`
//! (`python3 -m venv V && V/bin/pip install 'moto[server]'`); without it the
//! test is SKIPPED with a loud message.
#![allow(missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use depot_block::BlockDevice;
use depot_engine::{BackendConfig, VPool};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn start_moto(bin: &str) -> (Moto, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let moto = Moto(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

#[test]
fn s3_backend_against_moto() {
    let Ok(bin) = std::env::var("DEPOT_TEST_MOTO") else {
        // Written straight to stderr: libtest captures eprintln! output of
        // passing tests, and this message must not be swallowed.
        let _ = writeln!(
            std::io::stderr(),
            "\n\n********************************************************************\n\
             *** SKIPPED s3_backend_against_moto: DEPOT_TEST_MOTO is not set.   ***\n\
             *** Install moto (python3 -m venv V && V/bin/pip install           ***\n\
             *** 'moto[server]') and set DEPOT_TEST_MOTO=V/bin/moto_server.     ***\n\
             ********************************************************************\n"
        );
        return;
    };
    let (_moto, port) = start_moto(&bin);
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

    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.backend = BackendConfig::S3 {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: "depot-test".into(),
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        allow_http: true,
    };
    cfg.keep_shipped_bytes = 0; // reads after shipping are ranged GETs
    let pool = VPool::open(cfg.clone(), rt.handle().clone()).unwrap();
    let v = pool.create_volume("s3vol", 8 << 20, 512).unwrap();
    for i in 0..200u64 {
        v.write(i * 8, &pattern(i, i, 4096), i % 10 == 0).unwrap();
    }
    v.create_snapshot("snap").unwrap();
    for i in 0..100u64 {
        v.write(i * 8, &pattern(i + 500, i, 4096), false).unwrap();
    }
    // Faults on the real S3 path: retried, nothing lost.
    pool.faults().fail_next(3);
    v.sync_to_backend().unwrap();
    let c = pool.clone_volume("s3vol", Some("snap"), "s3clone").unwrap();
    c.sync_to_backend().unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..200u64 {
        v.read(i * 8, &mut buf).unwrap();
        let want = if i < 100 {
            pattern(i + 500, i, 4096)
        } else {
            pattern(i, i, 4096)
        };
        assert_eq!(buf, want, "ranged GET, cluster {i}");
    }
    assert!(v.stats().backend_reads > 0);
    let r = pool.scrub().unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    pool.abandon();
    drop((v, c, pool));
    // Restart from the S3 backend alone.
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = VPool::open(cfg, rt.handle().clone()).unwrap();
    let mut names = pool.list_volumes().unwrap();
    names.sort();
    assert_eq!(names, vec!["s3clone".to_string(), "s3vol".to_string()]);
    let v = pool.open_volume("s3vol").unwrap();
    let c = pool.open_volume("s3clone").unwrap();
    for i in 0..200u64 {
        v.read(i * 8, &mut buf).unwrap();
        let want = if i < 100 {
            pattern(i + 500, i, 4096)
        } else {
            pattern(i, i, 4096)
        };
        assert_eq!(buf, want, "after restart, cluster {i}");
        c.read(i * 8, &mut buf).unwrap();
        assert_eq!(buf, pattern(i, i, 4096), "clone after restart, cluster {i}");
    }
    pool.delete_volume("s3clone").unwrap();
    pool.shutdown().unwrap();
}
