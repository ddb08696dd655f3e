//! The one table of every module's RPC methods. A new module adds its `METHODS` here.

use super::method::RpcMethod;
use crate::{app, bdev, iscsi, nvmf, vhost};

/// Each module's method table, in the order `rpc_get_methods` lists them.
const TABLES: &[&[RpcMethod]] = &[
    app::rpc::METHODS,
    app::absent::METHODS,
    bdev::rpc::METHODS,
    bdev::modules::METHODS_DELAY,
    bdev::modules::METHODS_ERROR,
    bdev::modules::METHODS_CRYPTO,
    bdev::qos::METHODS,
    bdev::modules::METHODS_LVOL,
    bdev::modules::METHODS_MALLOC,
    bdev::modules::METHODS_NULL,
    bdev::modules::METHODS_NVME,
    bdev::modules::METHODS_RAID,
    bdev::modules::METHODS_RBD,
    bdev::modules::METHODS_PASSTHRU,
    bdev::modules::METHODS_SPLIT,
    bdev::modules::METHODS_URING,
    bdev::modules::METHODS_VIRTIO,
    vhost::rpc::METHODS,
    vhost::scsi::rpc::METHODS,
    iscsi::rpc::METHODS,
    nvmf::rpc::METHODS,
];

/// Every method.
pub fn all() -> impl Iterator<Item = &'static RpcMethod> {
    TABLES.iter().flat_map(|t| t.iter())
}

/// The method called `name`.
pub fn find(name: &str) -> Option<&'static RpcMethod> {
    all().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    /// docs/rpc.md lists exactly the methods served: each in a table row's first cell, as
    /// `name` (several may share a row, separated by commas).
    #[test]
    fn docs_rpc_md_lists_exactly_the_served_methods() {
        let doc = include_str!("../../docs/rpc.md");
        let mut documented: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| l.split('|').nth(1).unwrap_or_default().split(','))
            .map(|cell| cell.trim().trim_matches('`'))
            .collect();
        documented.sort_unstable();
        let mut served: Vec<&str> = super::all().map(|m| m.name).collect();
        served.sort_unstable();
        assert_eq!(documented, served, "docs/rpc.md and the method table differ");
    }

    #[test]
    fn method_names_are_unique() {
        let mut names: Vec<_> = super::all().map(|m| m.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a method is registered twice");
    }
}
