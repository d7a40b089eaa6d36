//! The daemon end to end, only through the CLI and real initiators: from an
//! empty data dir with no configuration, create VMs and engine vDisks, write
//! an image with qemu-img over iSCSI, snapshot, overwrite, clone the
//! snapshot into a second VM, check both read back exactly, restart, check
//! again, and check `/metrics` saw the I/O. Also: conflicts and in-use
//! refusals answer one-line errors with a non-zero exit, and the served
//! OpenAPI document is the checked-in one.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, Depot, pattern, peer, run_timeout};

const IMAGE: usize = 64 << 20;

fn qemu_img(args: &[&str]) {
    let out = run_timeout(
        Command::new(peer("qemu-img")).args(args),
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(url: &str, cmd: &str) {
    let text = common::qemu_io(url, &[cmd]);
    assert!(!text.contains("failed"), "qemu-io {cmd}: {text}");
}

/// Reads the first `len` bytes of a LUN back through qemu-img.
fn read_back(url: &str, dir: &std::path::Path, len: usize) -> Vec<u8> {
    let out = dir.join("back.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "dd",
        "-f",
        "raw",
        "-O",
        "raw",
        "bs=1M",
        &format!("count={}", len >> 20),
        &format!("if={url}"),
        &format!("of={}", out.display()),
    ]);
    std::fs::read(&out).expect("read back")
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert_eq!(first, None, "{what}: differs at byte {first:?}");
}

fn metric(text: &str, name: &str, vdisk: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("vdisk=\"{vdisk}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn vm_vdisk_snapshot_clone_restart_metrics_through_cli() {
    let mut depot = Depot::start_plain();
    let work = tempfile::tempdir().unwrap();

    // The embedded default vPool exists on a fresh node.
    let pools = depot.cli_ok(&["vpool", "list"]);
    assert!(pools.contains("default"), "{pools}");

    depot.cli_ok(&["vm", "create", "web1"]);
    depot.cli_ok(&["vm", "create", "web2"]);
    let created = depot.cli_ok(&["vdisk", "create", "root1", "--vm", "web1", "--size", "1G"]);
    assert!(
        created.contains("root1") && created.contains("1G"),
        "{created}"
    );

    // A repeated create is a clear conflict, one line, non-zero exit.
    let again = depot.cli(&["vm", "create", "web1"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already exists") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Write the known image over iSCSI.
    let a = pattern(IMAGE, 0xd0e1);
    let img_a = work.path().join("a.raw");
    std::fs::write(&img_a, &a).unwrap();
    let url1 = depot.url("web1", 0);
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        img_a.to_str().unwrap(),
        &url1,
    ]);

    depot.cli_ok(&["snapshot", "create", "root1", "s1"]);
    let snaps = depot.cli_ok(&["snapshot", "list", "root1"]);
    assert!(snaps.contains("s1"), "{snaps}");

    // Overwrite 4 MiB at 16 MiB.
    qemu_io(&url1, &format!("write -P 0xab {} {}", 16 << 20, 4 << 20));
    let mut b = a.clone();
    b[16 << 20..20 << 20].fill(0xab);

    // Clone the snapshot into the second VM.
    depot.cli_ok(&["vdisk", "clone", "root1@s1", "root2", "--vm", "web2"]);
    let url2 = depot.url("web2", 0);

    assert_same(
        &read_back(&url2, work.path(), IMAGE),
        &a,
        "clone vs snapshot image",
    );
    assert_same(
        &read_back(&url1, work.path(), IMAGE),
        &b,
        "original vs new image",
    );

    // In-use refusals say why.
    let del = depot.cli(&["snapshot", "delete", "root1", "s1"]);
    assert!(!del.status.success());
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("clone"),
        "{del:?}"
    );
    let del = depot.cli(&["vdisk", "delete", "root1"]);
    assert!(!del.status.success());
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("clone"),
        "{del:?}"
    );
    let del = depot.cli(&["vm", "delete", "web2"]);
    assert!(!del.status.success());
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("vDisks"),
        "{del:?}"
    );

    // The metrics saw the I/O.
    let (status, m) = depot.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metric(&m, "depot_vdisk_write_bytes_total", "root1") >= (IMAGE + (4 << 20)) as f64,
        "{}",
        m
    );
    assert!(
        metric(&m, "depot_vdisk_read_bytes_total", "root2") >= IMAGE as f64,
        "{}",
        m
    );
    assert!(
        metric(&m, "depot_vdisk_write_latency_seconds_count", "root1") > 0.0,
        "{}",
        m
    );
    assert!(
        m.contains("depot_vpool_flash_bytes{vpool=\"default\"}"),
        "{}",
        m
    );
    assert!(m.contains("depot_target_sessions{vm=\"web1\"}"), "{}", m);

    // Restart: everything is still there and reads the same.
    depot.restart();
    let list = depot.cli_ok(&["--json", "vdisk", "list"]);
    let v: serde_json::Value = serde_json::from_str(&list).expect("JSON list");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["root1", "root2"], "{list}");
    assert!(depot.cli_ok(&["snapshot", "list", "root1"]).contains("s1"));
    assert_same(
        &read_back(&url2, work.path(), IMAGE),
        &a,
        "clone after restart",
    );
    assert_same(
        &read_back(&url1, work.path(), IMAGE),
        &b,
        "original after restart",
    );
    let (_, m) = depot.http_get("/metrics");
    assert!(
        metric(&m, "depot_vdisk_read_bytes_total", "root1") >= IMAGE as f64,
        "{}",
        m
    );

    // Grow, then clean up in dependency order.
    let grown = depot.cli_ok(&["vdisk", "resize", "root1", "2G"]);
    assert!(grown.contains("2G"), "{grown}");
    depot.cli_ok(&["vdisk", "delete", "root2"]);
    depot.cli_ok(&["snapshot", "delete", "root1", "s1"]);
    depot.cli_ok(&["vdisk", "delete", "root1"]);
    depot.cli_ok(&["vm", "delete", "web2"]);
    assert!(!depot.cli_ok(&["vm", "list"]).contains("web2"));
}

#[test]
fn api_health_openapi_and_template_clones() {
    let depot = Depot::start_plain();
    let (status, body) = depot.http_get("/api/v1/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\""));
    let (status, body) = depot.http_get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, file,
        "served OpenAPI differs from docs/openapi.json"
    );

    depot.cli_ok(&["vm", "create", "gold"]);
    depot.cli_ok(&["vdisk", "create", "golden", "--vm", "gold", "--size", "64M"]);
    qemu_io(&depot.url("gold", 0), "write -P 0x5a 0 1M");
    depot.cli_ok(&["vdisk", "template", "golden"]);
    for i in 0..3 {
        let vm = format!("clone{i}");
        depot.cli_ok(&["vm", "create", &vm]);
        depot.cli_ok(&[
            "vdisk",
            "create",
            &format!("{vm}-root"),
            "--vm",
            &vm,
            "--template",
            "golden",
        ]);
        let out = run_timeout(
            Command::new(peer("qemu-io"))
                .args(["-f", "raw", "-c", "read -P 0x5a 0 1M"])
                .arg(depot.url(&vm, 0)),
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("failed"), "{text}");
    }
    // Raw vDisks refuse snapshots with a reason; bad sizes fail locally.
    depot.cli_ok(&[
        "vdisk", "create", "scratch", "--vm", "gold", "--size", "16M", "--kind", "raw",
    ]);
    let out = depot.cli(&["snapshot", "create", "scratch", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("raw"));
    let out = depot.cli(&["vdisk", "create", "bad", "--vm", "gold", "--size", "12Q"]);
    assert!(!out.status.success());
    let lun = depot.cli_ok(&["--json", "vdisk", "show", "scratch"]);
    assert!(lun.contains("\"lun\": 1"), "{lun}");
}

#[test]
fn api_token_is_required_when_configured() {
    let depot = Depot::start("api_token = \"s3cret-token\"\n");
    let (status, _) = depot.http_get("/api/v1/health");
    assert_eq!(status, 200, "health needs no token");
    let (status, body) = depot.http_get("/api/v1/vms");
    assert_eq!(status, 401, "{body}");
    let (status, _) = depot.http_get("/metrics");
    assert_eq!(status, 401);
    let out = depot.cli(&["vm", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"));
    let out = depot.cli(&["--token", "wrong", "vm", "list"]);
    assert!(!out.status.success());
    depot.cli_ok(&["--token", "s3cret-token", "vm", "create", "locked"]);
    assert!(
        depot
            .cli_ok(&["--token", "s3cret-token", "vm", "list"])
            .contains("locked")
    );
}

#[test]
fn api_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let ssl = |args: &[&str]| {
        let out = run_timeout(
            Command::new(peer("openssl")).args(args),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_pem, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=depot-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    ssl(&ca);
    let mut leaf = vec!["req"];
    leaf.extend(ec);
    leaf.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    ssl(&leaf);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    let depot = Depot::start(&format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"));
    let api = format!("https://{}", depot.api);
    let run = |extra: &[&str]| {
        run_timeout(
            Command::new(env!("CARGO_BIN_EXE_depot"))
                .args(["--api", &api])
                .args(extra)
                .args(["vpool", "list"]),
            Duration::from_secs(60),
        )
    };
    let out = run(&["--ca", &ca_pem]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("default"),
        "{out:?}\n{}",
        depot.log()
    );
    // Without trusting the CA the client refuses the daemon.
    assert!(!run(&[]).status.success());
}
