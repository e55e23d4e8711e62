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
}

impl DestinationControl for Registry {
    fn getdest(&self) -> serde_json::Value {
        self.describe()
    }

    fn putdest(&self, dest: &str) -> Result<(), String> {
        self.add(dest)
    }

    fn deldest(&self, dest: &str) -> Result<(), String> {
        self.remove(dest)
    }
}

/// The API handler over `control`.
pub fn handler(control: Arc<dyn DestinationControl>) -> Handler {
    Arc::new(move |req: &str| {
        let mut words = req.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let arg = words.next();
        match (cmd, arg) {
            ("getdest", _) => format!("{}\n", control.getdest()),
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
