//! The monitoring artefacts shipped in `packaging/` against a live daemon:
//! every metric a Grafana dashboard (`packaging/grafana/*.json`) or a
//! Prometheus file (`packaging/prometheus/*.yml`) references must be exported
//! by `depot serve` on `/metrics`, and the rule and config files must pass
//! `promtool` (Debian package `prometheus`, installed by
//! scripts/install-deps.sh; that part is skipped with a note if it is absent).
//! A real Prometheus then scrapes the daemon and evaluates every dashboard
//! query (each must return data) and every alert expression.
//!
//! The daemon here is standalone, so the metrics only a clustered router
//! exports ([`CLUSTER_ONLY`]) must be absent, and the queries that use them
//! need only parse; the grid's test (tests/system/cluster.rs) checks that
//! a clustered router exports every one of them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Depot, peer, run_timeout, vm_config};

/// Metrics only a clustered router exports (docs/metrics.md, *Grid*).
pub const CLUSTER_ONLY: &[&str] = &[
    "depot_router_info",
    "depot_router_lease_remaining_seconds",
    "depot_router_lease_state",
    "depot_router_vdisks_owned",
    "depot_cluster_router_up",
    "depot_vdisk_owner_info",
    "depot_vdisk_generation",
    // Exported by the owner of a mirrored vDisk.
    "depot_vdisk_dtl_state",
    // Exported once a router-to-router connection was refused.
    "depot_peer_refused_total",
];

fn cluster_only(expr: &str) -> bool {
    referenced(expr)
        .iter()
        .any(|n| CLUSTER_ONLY.contains(&n.as_str()))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One HTTP/1.0 request (no keep-alive, no chunking); returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {head}"));
    (status, body.to_string())
}

/// Sample names in a text exposition (`name{labels} value` or `name value`).
pub fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `depot_*` identifier in a file: metric names in PromQL. Labels,
/// alert names, dashboard uids and titles never start with `depot_`.
pub fn referenced(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("depot_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        if start == 0 || !ident(b[start - 1]) {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

pub fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} in {dir}");
    v
}

/// Grafana JSON sanity: uid, title, and a PromQL target on every panel.
fn check_dashboard(path: &Path, text: &str) {
    let d: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for key in ["uid", "title", "schemaVersion", "panels"] {
        assert!(d.get(key).is_some(), "{}: no {key}", path.display());
    }
    let panels = d["panels"].as_array().expect("panels array");
    assert!(panels.len() > 3, "{}: too few panels", path.display());
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{}: duplicate panel id",
            path.display()
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "{}: panel {title} has no query",
            path.display()
        );
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !expr.is_empty() && !referenced(expr).is_empty() || expr.contains("up{"),
                "{}: panel {title} has a query without a depot metric: {expr:?}",
                path.display()
            );
        }
    }
}

#[test]
fn dashboards_and_rules_use_only_exported_metrics() {
    let mut d = Depot::start(&vm_config("dash", "16M"));
    // A VM and an engine vDisk in the embedded default vPool, through the API.
    let (st, body) = http(d.api, "GET", "/api/v1/health", None);
    assert_eq!(st, 200, "health: {body}");
    let (st, body) = http(d.api, "POST", "/api/v1/vms", Some(r#"{"name":"dashvm"}"#));
    assert!(st == 200 || st == 201, "create VM: {st} {body}");
    let (st, body) = http(
        d.api,
        "POST",
        "/api/v1/vdisks",
        Some(r#"{"name":"dashvm-d0","vm":"dashvm","size":"16M","vpool":"default"}"#),
    );
    assert!(st == 200 || st == 201, "create vDisk: {st} {body}");

    // A little I/O on both so every per-vDisk series has samples.
    for url in [d.url("dash", 0), d.url("dashvm", 0)] {
        let out = run_timeout(
            Command::new(peer("qemu-io"))
                .args(["-f", "raw"])
                .args(["-c", "write -P 0x5a 0 64k"])
                .args(["-c", "read -P 0x5a 0 64k"])
                .args(["-c", "flush"])
                .arg(&url),
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("failed"),
            "qemu-io {url}: {text}"
        );
    }

    let (st, metrics) = http(d.api, "GET", "/metrics", None);
    assert_eq!(st, 200, "/metrics: {metrics}");
    let have = exported(&metrics);
    assert!(
        have.iter().any(|n| n.starts_with("depot_vdisk_")),
        "no per-vDisk series in /metrics:\n{metrics}"
    );
    for needle in [
        "depot_vdisk_write_bytes_total{vdisk=\"disk0\",vm=\"dash\"}",
        "vm=\"dashvm\"",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} not in /metrics:\n{metrics}"
        );
    }

    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    let mut sources = files("packaging/grafana", "json");
    sources.extend(files("packaging/prometheus", "yml"));
    for path in &sources {
        let text = std::fs::read_to_string(path).unwrap();
        if path.extension().is_some_and(|x| x == "json") {
            check_dashboard(path, &text);
        }
        for name in referenced(&text) {
            if !have.contains(&name) && !CLUSTER_ONLY.contains(&name.as_str()) {
                missing.push(format!("{}: {name}", path.display()));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics referenced but not exported by /metrics:\n  {}\nexported: {have:?}",
        missing.join("\n  ")
    );
    let clustered: Vec<_> = CLUSTER_ONLY.iter().filter(|n| have.contains(**n)).collect();
    assert!(
        clustered.is_empty(),
        "a standalone router exports cluster metrics {clustered:?}"
    );
    let unused: Vec<_> = have
        .iter()
        .filter(|n| n.starts_with("depot_") && !used.contains(*n))
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_count") && !n.ends_with("_sum"))
        .collect();
    if !unused.is_empty() {
        eprintln!("note: exported but on no dashboard or rule: {unused:?}");
    }

    promtool(&metrics);
    run_queries(d.api, &sources);
    assert!(d.stop(), "depot did not stop cleanly: {}", d.log());
}

/// Every `"expr"` string in a dashboard, with Grafana's variables replaced
/// by values that select the test's series.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(
                        e.replace("$__rate_interval", "30s")
                            .replace("$instance", ".*")
                            .replace("$job", "depot")
                            .replace("$vpool", ".*")
                            .replace("$vdisk", ".*")
                            .replace("$vm", "dashvm"),
                    ),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a real Prometheus (Debian package `prometheus`) scraping the daemon
/// every second and evaluates every dashboard query — each must parse and
/// return at least one series — and every alert expression (must parse).
fn run_queries(api: SocketAddr, sources: &[PathBuf]) {
    let Some(prom) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("note: prometheus not installed; dashboard queries not evaluated");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: depot\n    static_configs:\n      - targets: ['{api}']\n"
        ),
    )
    .unwrap();
    let port = crate::common::free_port();
    let web: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Command::new(prom)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    let mut guard = Kill(child);
    // Prometheus listens before its TSDB is open and answers 503 until then;
    // `/-/ready` says when queries will be served.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect_timeout(&web, Duration::from_millis(200)).is_ok()
            && http(web, "GET", "/-/ready", None).0 == 200
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus did not become ready"
        );
        if let Ok(Some(st)) = guard.0.try_wait() {
            panic!("prometheus exited: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let query = |q: &str| -> serde_json::Value {
        let (st, body) = http(
            web,
            "GET",
            &format!("/api/v1/query?query={}", url_encode(q)),
            None,
        );
        assert_eq!(st, 200, "query {q}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    // Wait for a few scrapes so rate() over 30s has two samples.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = query("count_over_time(depot_vdisk_size_bytes[1m])");
        let n = r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 4.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus scraped nothing: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut evaluated = 0;
    for path in sources {
        let text = std::fs::read_to_string(path).unwrap();
        if path.extension().is_some_and(|x| x == "json") {
            let mut exprs = Vec::new();
            dashboard_exprs(&serde_json::from_str(&text).unwrap(), &mut exprs);
            for e in exprs {
                let r = query(&e);
                assert_eq!(r["status"], "success", "{}: {e}: {r}", path.display());
                let n = r["data"]["result"].as_array().map_or(0, Vec::len);
                assert!(
                    n > 0 || cluster_only(&e),
                    "{}: no data for {e}",
                    path.display()
                );
                evaluated += 1;
            }
        }
    }
    // Alert expressions: valid PromQL (they normally select nothing).
    let rules =
        std::fs::read_to_string(repo().join("packaging/prometheus/depot-alerts.yml")).unwrap();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = l.len() - l.trim_start().len();
        let mut e = rest.trim().to_string();
        if e == "|" {
            e.clear();
            while let Some(n) = lines.peek() {
                if n.len() - n.trim_start().len() <= indent || n.trim().is_empty() {
                    break;
                }
                e.push_str(n.trim());
                e.push(' ');
                lines.next();
            }
        }
        let r = query(&e);
        assert_eq!(r["status"], "success", "alert expr {e}: {r}");
        evaluated += 1;
    }
    eprintln!("prometheus evaluated {evaluated} dashboard and alert queries");
}

/// `promtool check rules/config` on the shipped files, `promtool test rules`
/// on the alert unit tests, and its linter on the live exposition.
fn promtool(metrics: &str) {
    let Some(promtool) = promtool_path() else {
        eprintln!(
            "note: promtool not installed (apt-get install prometheus); rule files not checked"
        );
        return;
    };
    let dir = repo().join("packaging/prometheus");
    let mut checks: Vec<Vec<String>> = vec![
        vec!["check".into(), "rules".into(), "depot-alerts.yml".into()],
        vec!["check".into(), "config".into(), "prometheus.yml".into()],
    ];
    if dir.join("depot-alerts.test.yml").is_file() {
        checks.push(vec![
            "test".into(),
            "rules".into(),
            "depot-alerts.test.yml".into(),
        ]);
    }
    for args in checks {
        let out = run_timeout(
            Command::new(&promtool).args(&args).current_dir(&dir),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check_metrics(&promtool, metrics);
}

/// `promtool check metrics` (its linter) on an exposition, if promtool is
/// installed.
pub fn promtool_check_metrics(metrics: &str) {
    if let Some(p) = promtool_path() {
        check_metrics(&p, metrics);
    }
}

fn promtool_path() -> Option<PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn check_metrics(promtool: &Path, metrics: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metric_name_scanner() {
    let r = referenced(
        r#"rate(depot_vdisk_read_ops_total{vm="x"}[5m]) / x_depot_no + depot_vpool_flash_bytes uid: depot-overview"#,
    );
    assert_eq!(
        r.into_iter().collect::<Vec<_>>(),
        ["depot_vdisk_read_ops_total", "depot_vpool_flash_bytes"]
    );
    let e = exported("# HELP a b\n# TYPE a counter\na_total 1\nb{x=\"1\"} 2\n");
    assert_eq!(e.into_iter().collect::<Vec<_>>(), ["a_total", "b"]);
    assert!(cluster_only("min by (router) (depot_cluster_router_up)"));
    assert!(!cluster_only("depot_vdisk_size_bytes"));
}
