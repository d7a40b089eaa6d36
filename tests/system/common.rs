//! Shared harness: start and stop `depot serve`, find the peers, run them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `depot serve` with its own data directory.
pub struct Depot {
    child: Option<Child>,
    /// The data directory (kept across restarts).
    pub dir: tempfile::TempDir,
    /// iSCSI portal.
    pub portal: SocketAddr,
    /// Management API (and `/metrics`) address.
    pub api: SocketAddr,
    config: Option<PathBuf>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl Depot {
    /// Starts depot with `config` (TOML, without data_dir/listen settings).
    pub fn start(config: &str) -> Depot {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = dir.path().join("depot.toml");
        std::fs::write(&cfg_path, config).expect("write config");
        Depot::launch(dir, Some(cfg_path))
    }

    /// Starts depot with no configuration at all (the embedded default),
    /// only `--data-dir` and the listen addresses.
    pub fn start_plain() -> Depot {
        Depot::launch(tempfile::tempdir().expect("tempdir"), None)
    }

    fn launch(dir: tempfile::TempDir, config: Option<PathBuf>) -> Depot {
        let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut d = Depot {
            child: None,
            dir,
            portal,
            api,
            config,
        };
        d.spawn();
        d
    }

    /// Runs the `depot` CLI against this daemon's API.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(
            Command::new(env!("CARGO_BIN_EXE_depot"))
                .arg("--api")
                .arg(format!("http://{}", self.api))
                .args(args)
                .env_remove("DEPOT_API_TOKEN"),
            Duration::from_secs(300),
        )
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "depot {args:?} failed: {}{}\ndepot log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET path` on the API with plain HTTP/1.0; returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s =
            TcpStream::connect_timeout(&self.api, Duration::from_secs(5)).expect("connect API");
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("depot.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_depot"));
        cmd.arg("serve");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--iscsi-listen")
            .arg(self.portal.to_string())
            .arg("--api-listen")
            .arg(self.api.to_string())
            .env(
                "DEPOT_LOG",
                std::env::var("DEPOT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn depot");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&self.portal, Duration::from_millis(200)).is_err()
            || TcpStream::connect_timeout(&self.api, Duration::from_millis(200)).is_err()
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("depot exited early ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "depot did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("depot.log")).unwrap_or_default()
    }

    /// iSCSI URL of LUN `lun` of VM `vm`.
    pub fn url(&self, vm: &str, lun: u32) -> String {
        format!("iscsi://{}/iqn.2026-11.io.depot:{vm}/{lun}", self.portal)
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM and waits; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same data directory and portal.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the process again after a kill.
    pub fn respawn(&mut self) {
        self.spawn();
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// `depot --json ARGS` parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// The `[cluster]` section of router `name` on `etcd` (comma-separated
/// client URLs): a free peer port and a short lease so failure tests are
/// quick.
pub fn router_config(name: &str, etcd: &str, lease_ttl_secs: u64) -> String {
    let urls: Vec<String> = etcd.split(',').map(|u| format!("\"{u}\"")).collect();
    format!(
        "[cluster]\nrouter = \"{name}\"\netcd = [{}]\npeer_listen = \"127.0.0.1:{}\"\nlease_ttl_secs = {lease_ttl_secs}\n",
        urls.join(", "),
        free_port()
    )
}

impl Drop for Depot {
    fn drop(&mut self) {
        if self.child.is_some() && !self.stop() {
            eprintln!("depot did not stop cleanly; log:\n{}", self.log());
        }
    }
}

/// Where `scripts/install-deps.sh` puts the peers it builds:
/// `$XDG_CACHE_HOME/depot-tools`, else `~/.cache/depot-tools`.
pub fn tools_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("depot-tools"))
}

/// Path of a required peer program, or a panic that says how to get it.
pub fn peer(name: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = match name {
        "fio" => {
            let mut v = Vec::new();
            if let Ok(p) = std::env::var("DEPOT_FIO") {
                v.push(PathBuf::from(p));
            }
            if let Some(tools) = tools_cache() {
                v.push(tools.join("fio/bin/fio"));
            }
            v
        }
        other => ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join(other))
            .collect(),
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/install-deps.sh"))
}

/// Runs a command with a time limit, capturing its output.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(out_pipe));
    let err_t = std::thread::spawn(move || read_all(err_pipe));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = out_t.join().unwrap_or_default();
            panic!(
                "{cmd:?} exceeded {limit:?}; output so far:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn read_all<R: std::io::Read>(r: Option<R>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut v);
    }
    v
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A VM with one raw disk of `size`, plus optional extra TOML.
pub fn vm_config(vm: &str, size: &str) -> String {
    format!("[[vm]]\nname = \"{vm}\"\n[[vm.disk]]\nname = \"disk0\"\nsize = \"{size}\"\n")
}

/// A VM with one engine-backed disk (on the embedded default vPool).
pub fn engine_vm_config(vm: &str, size: &str) -> String {
    format!(
        "[[vm]]\nname = \"{vm}\"\n[[vm.disk]]\nname = \"disk0\"\nsize = \"{size}\"\nkind = \"engine\"\n"
    )
}

/// Runs `qemu-io` on a raw `url` with each of `cmds` as a `-c` command;
/// panics with the output if it fails. Returns stdout and stderr.
pub fn qemu_io<S: AsRef<str>>(url: &str, cmds: &[S]) -> String {
    qemu_io_with(url, &[], cmds)
}

/// [`qemu_io`] with extra `qemu-io` options (e.g. `-t writeback`).
pub fn qemu_io_with<S: AsRef<str>>(url: &str, opts: &[&str], cmds: &[S]) -> String {
    let mut c = Command::new(peer("qemu-io"));
    c.arg("-f").arg("raw").args(opts);
    for cmd in cmds {
        c.arg("-c").arg(cmd.as_ref());
    }
    c.arg(url);
    let out = run_timeout(&mut c, Duration::from_secs(120));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-io failed: {text}");
    text
}
