//! Rendering the API's answers: aligned tables for humans, or the answer's
//! JSON with `--json`.
//!
//! Invariants: one row per object and one column list per kind
//! ([`Tabular`]), plus optional columns (cluster-only fields) shown only
//! when some row of the table has them, so a standalone router's tables
//! are what they always were; JSON output is the answer re-encoded as pretty JSON
//! (object keys sorted), so it does not depend on field order in the
//! views; a command that only acknowledges prints its message in table
//! mode and nothing with `--json`.

use anyhow::Context;
use depot_engine::BackendConfig;
use serde::Serialize;

use crate::model::{
    MoveReport, RecoverReport, RouterView, SnapshotView, VDiskView, VPoolView, VmView,
};
use crate::size;

/// An object shown as one table row.
pub trait Tabular {
    /// Column headings.
    const HEADERS: &'static [&'static str];
    /// The row's cells, one per heading.
    fn row(&self) -> Vec<String>;
    /// Headings of columns shown after [`Tabular::HEADERS`] only when some
    /// row of the table has a value for them (a cell without one shows `-`).
    const OPTIONAL: &'static [&'static str] = &[];
    /// The row's optional cells, one per optional heading.
    fn optional(&self) -> Vec<Option<String>> {
        Vec::new()
    }
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

/// The table of `items`: the kind's columns, then each optional column
/// that some item has a value for.
pub fn rows<T: Tabular>(items: &[T]) -> String {
    let extra: Vec<Vec<Option<String>>> = items.iter().map(Tabular::optional).collect();
    let shown: Vec<usize> = (0..T::OPTIONAL.len())
        .filter(|&i| extra.iter().any(|r| r.get(i).is_some_and(Option::is_some)))
        .collect();
    let mut headers = T::HEADERS.to_vec();
    headers.extend(shown.iter().map(|&i| T::OPTIONAL[i]));
    let cells = items
        .iter()
        .zip(extra)
        .map(|(item, mut opt)| {
            let mut row = item.row();
            row.extend(shown.iter().map(|&i| {
                opt.get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| "-".into())
            }));
            row
        })
        .collect();
    table(&headers, cells)
}

/// How answers are shown.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`.
    pub json: bool,
}

impl Output {
    fn json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
        let v = serde_json::to_value(v).context("encoding the request")?;
        serde_json::to_string_pretty(&v).context("encoding JSON")
    }

    /// One object: a JSON object, or a one-row table.
    pub fn one<T: Tabular + Serialize>(&self, v: &T) -> anyhow::Result<String> {
        if self.json {
            Self::json(v)
        } else {
            Ok(rows(std::slice::from_ref(v)))
        }
    }

    /// A list: a JSON array, or a table.
    pub fn many<T: Tabular + Serialize>(&self, v: &[T]) -> anyhow::Result<String> {
        if self.json {
            Self::json(v)
        } else {
            Ok(rows(v))
        }
    }

    /// An acknowledgement: `msg`, or nothing with `--json`.
    pub fn done(&self, msg: String) -> String {
        if self.json { String::new() } else { msg }
    }
}

impl Tabular for VPoolView {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "BACKEND",
        "VDISKS",
        "UNSHIPPED",
        "FLASH",
        "BACKEND-USED",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.info.name.clone(),
            match self.info.backend.get() {
                BackendConfig::Local { path } => format!("local:{}", path.display()),
                BackendConfig::S3 { bucket, .. } => format!("s3:{bucket}"),
            },
            self.vdisks.len().to_string(),
            size::format(self.bytes_waiting_to_ship),
            size::format(self.flash_bytes),
            size::format(self.backend_bytes),
        ]
    }
}

impl Tabular for VmView {
    const HEADERS: &'static [&'static str] = &["NAME", "TARGET", "VDISKS", "SESSIONS", "CHAP"];
    fn row(&self) -> Vec<String> {
        vec![
            self.info.name.clone(),
            self.target.clone(),
            self.vdisks.join(","),
            self.sessions.to_string(),
            if self.mutual_chap {
                "mutual".into()
            } else if self.chap {
                "yes".into()
            } else {
                "no".into()
            },
        ]
    }
}

impl Tabular for VDiskView {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "VM",
        "LUN",
        "SIZE",
        "KIND",
        "VPOOL",
        "SNAPSHOTS",
        "ORIGIN",
        "STATE",
    ];
    fn row(&self) -> Vec<String> {
        let d = &self.info;
        vec![
            d.name.clone(),
            d.vm.clone(),
            d.lun.to_string(),
            size::format(d.size_bytes),
            d.kind.to_string(),
            d.vpool.clone().unwrap_or_else(|| "-".into()),
            self.snapshots.to_string(),
            d.origin.clone().unwrap_or_else(|| "-".into()),
            match (self.online, d.template, d.read_only) {
                (false, _, _) => "offline".into(),
                (true, true, _) => "template".into(),
                (true, false, true) => "read-only".into(),
                _ => "online".into(),
            },
        ]
    }
    const OPTIONAL: &'static [&'static str] = &["OWNER", "GEN", "DTL", "DTL HOLDER"];
    fn optional(&self) -> Vec<Option<String>> {
        let dtl = self.dtl.as_ref();
        vec![
            self.owner.clone(),
            self.generation.map(|g| g.to_string()),
            dtl.map(|d| match &d.state {
                Some(s) => format!("{} ({})", s.replace('_', " "), d.mode.as_str()),
                None => d.mode.as_str().to_string(),
            }),
            dtl.and_then(|d| d.holder.clone()),
        ]
    }
}

impl Tabular for RouterView {
    const HEADERS: &'static [&'static str] =
        &["NAME", "STATE", "PORTAL", "API", "VDISKS", "TPGT", "DOMAIN"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.state.clone(),
            self.portal.clone(),
            self.api.clone(),
            self.vdisks.to_string(),
            self.tpgt.to_string(),
            self.failure_domain.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}

impl Tabular for MoveReport {
    const HEADERS: &'static [&'static str] = &[
        "VDISK",
        "FROM",
        "TO",
        "GENERATION",
        "PRECOPIED",
        "PAUSED",
        "PAUSE",
        "TOTAL",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.vdisk.clone(),
            self.from.clone(),
            self.to.clone(),
            self.generation.to_string(),
            size::format(self.precopied_bytes),
            size::format(self.paused_bytes),
            format!("{} ms", self.pause_ms),
            format!("{} ms", self.total_ms),
        ]
    }
}

impl Tabular for RecoverReport {
    const HEADERS: &'static [&'static str] =
        &["VDISK", "FROM", "TO", "GENERATION", "RECOVERY POINT"];
    fn row(&self) -> Vec<String> {
        vec![
            self.vdisk.clone(),
            self.from.clone(),
            self.to.clone(),
            self.generation.to_string(),
            self.recovery_point.clone(),
        ]
    }
}

impl Tabular for SnapshotView {
    const HEADERS: &'static [&'static str] = &["NAME", "CREATED", "ON-BACKEND", "CLONES"];
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.created_unix.to_string(),
            if self.on_backend { "yes" } else { "no" }.into(),
            self.clones.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x");
    }

    // Views as the daemon answered them, and the tables and `--json`
    // output the CLI printed for them before it was split into parts.
    const S3_POOL: &str = r#"{"name":"s3pool","backend":{"type":"s3","endpoint":null,"bucket":"depot","region":"eu-west-1","access_key_id":"AKIA","allow_http":false},"cache_dirs":["/flash/a"],"policy":{"block_size":512,"write_buffer_bytes":2147483648,"read_cache_bytes":1073741824,"container_bytes":67108864,"ship_interval_secs":30},"vdisks":["root2"],"online":true,"bytes_waiting_to_ship":7,"flash_bytes":8,"backend_bytes":9}"#;
    const LOCAL_POOL: &str = r#"{"name":"default","backend":{"type":"local","path":"/b"},"cache_dirs":["/f"],"policy":{"block_size":512,"write_buffer_bytes":2147483648,"read_cache_bytes":1073741824,"container_bytes":67108864,"ship_interval_secs":30},"vdisks":[],"online":false,"bytes_waiting_to_ship":0,"flash_bytes":0,"backend_bytes":0}"#;
    const VM: &str = r#"{"name":"web1","target":"iqn.2026-11.io.depot:web1","allowed_initiators":["iqn.x"],"chap":true,"mutual_chap":true,"vdisks":["root1","web1-data"],"sessions":1}"#;
    const ENGINE_DISK: &str = r#"{"name":"root2","vm":"web2","lun":0,"kind":"engine","vpool":"s3pool","size_bytes":2147483648,"block_size":4096,"read_only":false,"template":false,"origin":"root1@s1","serial":"00000000000000000000000000000042","target":"iqn.2026-11.io.depot:web2","snapshots":3,"online":true}"#;
    const RAW_DISK: &str = r#"{"name":"web1-data","vm":"web1","lun":1,"kind":"raw","vpool":null,"size_bytes":67108864,"block_size":4096,"read_only":true,"template":false,"origin":null,"serial":"fedcba9876543210fedcba9876543210","target":"iqn.2026-11.io.depot:web1","snapshots":0,"online":false}"#;

    // The same vDisks as a clustered router shows them.
    const CLUSTER_DISK: &str = r#"{"name":"root2","vm":"web2","lun":0,"kind":"engine","vpool":"s3pool","size_bytes":2147483648,"block_size":4096,"read_only":false,"template":false,"origin":"root1@s1","serial":"00000000000000000000000000000042","target":"iqn.2026-11.io.depot:web2","snapshots":3,"online":true,"owner":"r2","generation":1041}"#;
    const CLUSTER_STANDBY_DISK: &str = r#"{"name":"web1-data","vm":"web1","lun":1,"kind":"engine","vpool":"s3pool","size_bytes":67108864,"block_size":4096,"read_only":false,"template":false,"origin":null,"serial":"fedcba9876543210fedcba9876543210","target":"iqn.2026-11.io.depot:web1","snapshots":0,"online":true,"owner":"r1","generation":7}"#;

    fn parse<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn tables_are_unchanged() {
        let pools: Vec<VPoolView> = vec![parse(S3_POOL), parse(LOCAL_POOL)];
        assert_eq!(
            rows(&pools),
            "NAME     BACKEND   VDISKS  UNSHIPPED  FLASH  BACKEND-USED\n\
             s3pool   s3:depot  1       7B         8B     9B\n\
             default  local:/b  0       0B         0B     0B"
        );
        let vms: Vec<VmView> = vec![parse(VM)];
        assert_eq!(
            rows(&vms),
            "NAME  TARGET                     VDISKS           SESSIONS  CHAP\n\
             web1  iqn.2026-11.io.depot:web1  root1,web1-data  1         mutual"
        );
        let disks: Vec<VDiskView> = vec![parse(ENGINE_DISK), parse(RAW_DISK)];
        assert_eq!(
            rows(&disks),
            "NAME       VM    LUN  SIZE  KIND    VPOOL   SNAPSHOTS  ORIGIN    STATE\n\
             root2      web2  0    2G    engine  s3pool  3          root1@s1  online\n\
             web1-data  web1  1    64M   raw     -       0          -         offline"
        );
        let snaps = vec![
            SnapshotView {
                name: "s1".into(),
                created_unix: 1700000000,
                on_backend: true,
                clones: 2,
            },
            SnapshotView {
                name: "snap-1700000001".into(),
                created_unix: 1700000001,
                on_backend: false,
                clones: 0,
            },
        ];
        assert_eq!(
            rows(&snaps),
            "NAME             CREATED     ON-BACKEND  CLONES\n\
             s1               1700000000  yes         2\n\
             snap-1700000001  1700000001  no          0"
        );
    }

    #[test]
    fn clustered_vdisks_show_owner_and_generation() {
        let disks: Vec<VDiskView> = vec![parse(CLUSTER_DISK), parse(CLUSTER_STANDBY_DISK)];
        assert_eq!(
            rows(&disks),
            "NAME       VM    LUN  SIZE  KIND    VPOOL   SNAPSHOTS  ORIGIN    STATE   OWNER  GEN\n\
             root2      web2  0    2G    engine  s3pool  3          root1@s1  online  r2     1041\n\
             web1-data  web1  1    64M   engine  s3pool  0          -         online  r1     7"
        );
        // `vdisk show`: the same columns for one row.
        let table = Output { json: false };
        assert_eq!(
            table.one(&disks[0]).unwrap(),
            "NAME   VM    LUN  SIZE  KIND    VPOOL   SNAPSHOTS  ORIGIN    STATE   OWNER  GEN\n\
             root2  web2  0    2G    engine  s3pool  3          root1@s1  online  r2     1041"
        );
        // A row without an owner (not claimed yet) among owned ones.
        let mut unowned: VDiskView = parse(CLUSTER_STANDBY_DISK);
        unowned.owner = None;
        unowned.generation = None;
        let mixed = vec![parse::<VDiskView>(CLUSTER_DISK), unowned];
        let t = rows(&mixed);
        assert!(t.ends_with("online  -      -"), "{t}");
        // `--json` carries both fields.
        let v: serde_json::Value =
            serde_json::from_str(&Output { json: true }.one(&disks[0]).unwrap()).unwrap();
        assert_eq!(v["owner"], "r2");
        assert_eq!(v["generation"], 1041);
    }

    #[test]
    fn optional_columns_appear_only_when_a_row_has_them() {
        struct T(Option<&'static str>, Option<&'static str>);
        impl Tabular for T {
            const HEADERS: &'static [&'static str] = &["A"];
            fn row(&self) -> Vec<String> {
                vec!["a".into()]
            }
            const OPTIONAL: &'static [&'static str] = &["X", "Y"];
            fn optional(&self) -> Vec<Option<String>> {
                vec![self.0.map(Into::into), self.1.map(Into::into)]
            }
        }
        assert_eq!(rows(&[T(None, None)]), "A\na");
        assert_eq!(rows(&[T(None, Some("y"))]), "A  Y\na  y");
        assert_eq!(
            rows(&[T(Some("x"), None), T(None, None)]),
            "A  X\na  x\na  -"
        );
        assert_eq!(rows::<T>(&[]), "A");
    }

    #[test]
    fn json_output_is_unchanged() {
        let out = Output { json: true };
        let pools: Vec<VPoolView> = vec![parse(S3_POOL), parse(LOCAL_POOL)];
        assert_eq!(
            out.many(&pools).unwrap(),
            include_str!("../testdata/vpool-list.json")
        );
        let disks: Vec<VDiskView> = vec![parse(ENGINE_DISK), parse(RAW_DISK)];
        assert_eq!(
            out.many(&disks).unwrap(),
            include_str!("../testdata/vdisk-list.json")
        );
        let one: VmView = parse(VM);
        let v: serde_json::Value = serde_json::from_str(&out.one(&one).unwrap()).unwrap();
        assert_eq!(v, parse::<serde_json::Value>(VM));
        assert_eq!(out.done("vPool p deleted".into()), "");
        let table = Output { json: false };
        assert_eq!(table.done("vPool p deleted".into()), "vPool p deleted");
        assert_eq!(table.one(&one).unwrap(), rows(std::slice::from_ref(&one)));
    }
}
