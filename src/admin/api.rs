//! The runtime API (`-api-addr`): `getdest`, `putdest <dest>`, `deldest <dest>`.

use std::sync::Arc;

use super::{not_a_command, Handler};
use crate::registry::Registry;

/// What the API needs from the daemon: the destination registry.
pub trait DestinationControl: Send + Sync + 'static {
    /// JSON `{"active": [...], "registered": {...}}`.
    fn getdest(&self) -> serde_json::Value;
    /// Adds a destination; `Err` carries a message for the client.
    fn putdest(&self, dest: &str) -> Result<(), String>;
    /// Removes a destination.
    fn deldest(&self, dest: &str) -> Result<(), String>;
    /// `getdest ARGS` on the line API (a cluster name under `-config`); without arguments
    /// the same as [`getdest`](Self::getdest).
    fn getdest_args(&self, args: &str) -> Result<serde_json::Value, String> {
        let _ = args;
        Ok(self.getdest())
    }
}

impl DestinationControl for Registry {
    fn getdest(&self) -> serde_json::Value {
        self.describe()
    }

    // The first word: what the API always took (words after it are ignored).
    fn putdest(&self, dest: &str) -> Result<(), String> {
        self.add(dest.split_whitespace().next().unwrap_or(""))
    }

    fn deldest(&self, dest: &str) -> Result<(), String> {
        self.remove(dest.split_whitespace().next().unwrap_or(""))
    }
}

/// The API handler over `control`.
pub fn handler(control: Arc<dyn DestinationControl>) -> Handler {
    Arc::new(move |req: &str| {
        let req = req.trim();
        let (cmd, rest) = req
            .split_once(char::is_whitespace)
            .map_or((req, ""), |(c, r)| (c, r.trim()));
        // The rest of the line: `host:port`, or `CLUSTER host:port` under `-config`.
        let arg = (!rest.is_empty()).then_some(rest);
        match (cmd, arg) {
            ("getdest", _) => match control.getdest_args(rest) {
                Ok(v) => format!("{v}\n"),
                Err(e) => format!("{e}\n"),
            },
            ("putdest" | "deldest", None) => "Must provide destination\n".to_string(),
            ("putdest", Some(d)) => match control.putdest(d) {
                Ok(()) => format!("Registered destination: {d}\n"),
                Err(e) => format!("{e}\n"),
            },
            ("deldest", Some(d)) => match control.deldest(d) {
                Ok(()) => format!("Unregistered destination: {d}\n"),
                Err(e) => format!("{e}\n"),
            },
            _ => not_a_command(req),
        }
    })
}
