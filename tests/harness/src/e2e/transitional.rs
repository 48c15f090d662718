//! Bridges to two features being built on other branches (issue #10), so
//! this branch runs before and after they are merged. Remove once both are
//! in main: the shipped configs and the harness then use them as they are.
//!
//! - `cellmap serve --persist <file>` (the sidecar branch): the harness
//!   passes it only when `cellmap serve --help` lists it.
//! - the filter's `sidecar.persisted` setting (the filter branch): the
//!   shipped configs name it; while the filter in this checkout does not know
//!   it (`filter/config.schema.json` has no `persisted`), the harness removes
//!   it from the plugin configuration it renders, and says so once.

use super::{cellmap_bin, plugin_config_of, repo_root};
use anyhow::Result;
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;

/// Whether the `cellmap` in use has `serve --persist`.
pub fn cellmap_has_persist() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let Ok(bin) = cellmap_bin() else {
            return false;
        };
        Command::new(bin)
            .args(["serve", "--help"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).contains("--persist"))
            .unwrap_or(false)
    })
}

/// Whether the filter in this checkout has the `sidecar.persisted` setting.
pub fn filter_has_persisted() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::fs::read_to_string(repo_root().join("filter/config.schema.json"))
            .map(|schema| schema.contains("\"persisted\""))
            .unwrap_or(false)
    })
}

/// Removes `sidecar.persisted`; whether there was one.
pub fn without_persisted(config: &mut Value) -> bool {
    config
        .get_mut("sidecar")
        .and_then(Value::as_object_mut)
        .and_then(|sidecar| sidecar.remove("persisted"))
        .is_some()
}

/// The plugin configuration to render for `template`: `explicit` if given,
/// else the template's own (`None`: keep the template's text), minus
/// `sidecar.persisted` while the filter does not know it.
pub(super) fn plugin_config(template: &str, explicit: Option<Value>) -> Result<Option<Value>> {
    if filter_has_persisted() {
        return Ok(explicit);
    }
    let mut config = match explicit {
        Some(config) => config,
        None => match plugin_config_of(template) {
            Ok(config) => config,
            // No plugin configuration in this template (a backend).
            Err(_) => return Ok(None),
        },
    };
    if without_persisted(&mut config) {
        static SAID: OnceLock<()> = OnceLock::new();
        SAID.get_or_init(|| {
            eprintln!(
                "harness: the filter in this checkout has no sidecar.persisted yet; \
                 running the shipped configs without it"
            );
        });
    }
    Ok(Some(config))
}
