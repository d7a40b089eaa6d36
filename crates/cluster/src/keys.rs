//! The etcd key layout, in one place (documented in docs/cluster.md).
//! Every key is `<prefix>/<kind>/<name>`; names follow the one naming rule,
//! so no name contains `/` and a prefix scan of a kind sees only that kind.
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `routers/<r>` | [`RouterRecord`](crate::members::RouterRecord) | persistent: the router is a member |
//! | `alive/<r>` | [`AliveRecord`](crate::members::AliveRecord) | under the router's lease: it is up |
//! | `owners/<vdisk>` | [`OwnerRecord`](crate::owner::OwnerRecord) | persistent; its mod revision is the generation |
//! | `vpools/`, `vms/`, `vdisks/` `<name>` | the daemon's records (JSON) | persistent |
//! | `pr/<vdisk>` | persistent-reservation state (JSON) | persistent |
//! | `dtl/<vdisk>` | [`DtlRecord`](crate::dtl::DtlRecord): mirror holder and state | persistent, written by the owner |
//! | `ca/...` | the cluster's certificate authority | persistent |
//! | `tpgt/<n>` | the router that claimed portal group tag `n` | persistent |

/// Kinds of keys (the path segment after the prefix).
pub mod kind {
    /// Router membership records.
    pub const ROUTERS: &str = "routers";
    /// Router liveness, under leases.
    pub const ALIVE: &str = "alive";
    /// vDisk ownership.
    pub const OWNERS: &str = "owners";
    /// vPool records.
    pub const VPOOLS: &str = "vpools";
    /// VM records.
    pub const VMS: &str = "vms";
    /// vDisk records.
    pub const VDISKS: &str = "vdisks";
    /// Persistent reservations per vDisk.
    pub const PR: &str = "pr";
    /// The cluster certificate authority.
    pub const CA: &str = "ca";
    /// Target portal group tags claimed by routers.
    pub const TPGT: &str = "tpgt";
    /// Each vDisk's mirror (DTL): holder and state.
    pub const DTL: &str = "dtl";
}

/// Builds and parses keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The key of `name` of `kind`.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// The prefix every key of `kind` starts with.
    pub fn kind_prefix(&self, kind: &str) -> String {
        format!("{}/{kind}/", self.prefix)
    }

    /// The prefix of every key of the cluster.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Splits a full key into (kind, name); `None` for a key outside the
    /// prefix or without both parts.
    pub fn parse<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        (!kind.is_empty() && !name.is_empty()).then_some((kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/depot/");
        let key = k.key(kind::VDISKS, "web1-root");
        assert_eq!(key, "/depot/vdisks/web1-root");
        assert_eq!(k.parse(&key), Some(("vdisks", "web1-root")));
        assert!(key.starts_with(&k.kind_prefix(kind::VDISKS)));
        assert!(
            !k.key(kind::VMS, "x")
                .starts_with(&k.kind_prefix(kind::VDISKS))
        );
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        let k = Keys::new("/depot");
        assert_eq!(k.parse("/other/vms/a"), None);
        assert_eq!(k.parse("/depotx/vms/a"), None);
        assert_eq!(k.parse("/depot/vms"), None);
        assert_eq!(k.parse("/depot/vms/"), None);
    }
}
