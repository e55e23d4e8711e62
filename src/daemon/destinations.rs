//! Where the destinations come from: `-destinations`, `-destinations-file`, and
//! re-reading the file on SIGHUP.

use std::path::Path;

use super::DaemonError;
use crate::dest::DestAddr;
use crate::registry::Registry;

/// Reads a destinations file: one `host:port[:instance]` per line, `#` comments.
/// Any bad line rejects the whole file (the caller keeps its current set).
pub fn read_file(path: &Path) -> Result<Vec<DestAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<DestAddr> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let addr: DestAddr = line
            .parse()
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// `-destinations` plus the destinations file (if any), without duplicates.
pub fn all(flag: &str, file: Option<&Path>) -> Result<Vec<DestAddr>, DaemonError> {
    let mut all = DestAddr::parse_list(flag)
        .map_err(|e| DaemonError::config(format!("-destinations: {e}")))?;
    if let Some(path) = file {
        for addr in
            read_file(path).map_err(|e| DaemonError::config(format!("-destinations-file {e}")))?
        {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    Ok(all)
}

/// SIGHUP part for destinations: re-reads the file and applies it over the
/// `-destinations` flag's list.
pub fn reload(registry: &Registry, flag: &str, file: &Path) {
    match all(flag, Some(file)) {
        Ok(all) => {
            let (added, removed) = registry.apply(&all);
            tracing::info!(
                "SIGHUP: destinations reloaded from {}: {added} added, {removed} removed",
                file.display()
            );
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current destinations: {e}"),
    }
}
