//! Garage (a real self-hosted S3 server) on 127.0.0.1: one node in a fresh
//! directory, with its own access key and buckets. It ignores conditional
//! PUTs, so it exercises the other fencing path. Found through
//! `DEPOT_TEST_GARAGE`, else `garage` on `PATH`; it is not installed by
//! scripts/install-deps.sh (a long build), so CI runs against moto and the
//! grid's system tests run against Garage on demand ([`crate::S3Server`]).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running single-node Garage.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    port: u16,
    key: String,
    secret: String,
    _dir: tempfile::TempDir,
}

/// Where garage is, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DEPOT_TEST_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

impl Garage {
    /// Starts Garage on free ports, gives the node its layout and creates
    /// an access key; panics if garage is missing or does not come up.
    pub fn start() -> Garage {
        let bin = binary().expect("garage not found: set DEPOT_TEST_GARAGE");
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, rpc) = (free_port(), free_port());
        let secret: String = (0..32).map(|i| format!("{:02x}", rand_byte(i))).collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{0}/meta\"\ndata_dir = \"{0}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                dir.path().display()
            ),
        )
        .expect("writing garage.toml");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut g = Garage {
            child,
            bin,
            config,
            port,
            key: String::new(),
            secret: String::new(),
            _dir: dir,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "garage did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = g.admin(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap_or_default().to_string();
        g.admin(&["layout", "assign", "-z", "dc1", "-c", "10G", &id]);
        g.admin(&["layout", "apply", "--version", "1"]);
        let key = g.admin(&["key", "create", "depot-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name:?} in {key}"))
        };
        g.key = field("Key ID:");
        g.secret = field("Secret key:");
        g
    }

    /// Runs `garage ARGS` against this node; its standard output.
    fn admin(&self, args: &[&str]) -> String {
        let t0 = Instant::now();
        loop {
            let out: Output = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running garage {args:?}: {e}"));
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // The node may still be starting up.
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "garage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket the key may read and write.
    pub fn bucket(&self, name: &str) {
        self.admin(&["bucket", "create", name]);
        self.admin(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            "depot-test",
        ]);
    }

    /// The access key id.
    pub fn access_key(&self) -> &str {
        &self.key
    }

    /// The secret key.
    pub fn secret_key(&self) -> &str {
        &self.secret
    }
}

/// A byte for the RPC secret (the node talks to nobody else; it need not
/// be unpredictable, only well-formed).
fn rand_byte(i: u32) -> u8 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (t.wrapping_mul(2_654_435_761)
        .wrapping_add(i.wrapping_mul(40_503))
        >> 13)
        .to_le_bytes()[0]
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
