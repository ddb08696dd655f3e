//! What a benchmark takes from a saved configuration: the bdevs, not the frontends.

use serde_json::Value;

/// Whether a configuration entry's method creates or configures a vhost frontend.
fn is_frontend(method: &str) -> bool {
    method.starts_with("vhost_")
}

/// `doc` without its `vhost_*` entries, each skipped one logged: a configuration saved from a
/// daemon creates controllers whose sockets a benchmark neither needs nor may take from a
/// running daemon or leave behind. Everything else (bdevs, and options a later part of the
/// document may need) is kept as it is, for `app::config::load` to judge.
pub fn bdevs_only(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let Some(subsystems) = doc.get_mut("subsystems").and_then(Value::as_array_mut) else { return doc };
    for s in subsystems {
        let name = s.get("subsystem").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some(entries) = s.get_mut("config").and_then(Value::as_array_mut) else { continue };
        entries.retain(|e| {
            let method = e.get("method").and_then(Value::as_str).unwrap_or_default();
            if is_frontend(method) {
                tracing::warn!("skipping {method} (subsystem {name}): ferry-bdevperf loads only bdevs");
            }
            !is_frontend(method)
        });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vhost_entries_go_and_everything_else_stays_in_order() {
        let doc = json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_malloc_create", "params": {"name": "M0"}},
                {"method": "bdev_virtio_attach_controller", "params": {"name": "V"}},
                {"method": "bdev_wait_for_examine"}]},
            {"subsystem": "vhost_scsi", "config": [
                {"method": "vhost_create_scsi_controller", "params": {"ctrlr": "vhost.1"}},
                {"method": "vhost_scsi_controller_add_target", "params": {"ctrlr": "vhost.1"}}]},
            {"subsystem": "vhost_blk", "config": [
                {"method": "vhost_create_blk_controller", "params": {"ctrlr": "vhost.0"}}]},
            {"subsystem": "accel", "config": null}
        ]});
        let kept = bdevs_only(&doc);
        assert_eq!(kept["subsystems"][0], doc["subsystems"][0]);
        assert_eq!(kept["subsystems"][1]["config"], json!([]));
        assert_eq!(kept["subsystems"][2]["config"], json!([]));
        assert_eq!(kept["subsystems"][3], doc["subsystems"][3]);
    }

    #[test]
    fn a_document_without_subsystems_is_left_for_the_loader_to_refuse() {
        assert_eq!(bdevs_only(&json!({"x": 1})), json!({"x": 1}));
    }
}
