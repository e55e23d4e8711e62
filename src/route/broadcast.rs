//! `-distribution broadcast`: every line to every destination.

use super::{RoutedPart, Router};
use crate::batch::Batch;

/// Sends the whole batch to each of `destinations` destinations, sharing one buffer.
pub struct Broadcast {
    /// Number of destinations.
    pub destinations: usize,
}

impl Router for Broadcast {
    fn route(&self, batch: &Batch, out: &mut Vec<RoutedPart>) {
        if batch.is_empty() {
            return;
        }
        out.extend((0..self.destinations).map(|dest| RoutedPart {
            dest,
            data: batch.data().clone(),
            points: batch.len() as u64,
        }));
    }

    fn sends_everything_everywhere(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_shares_the_buffer() {
        let (batch, _) = Batch::from_plaintext(b"a 1 2\nb 3 4\n".to_vec(), None);
        let mut out = Vec::new();
        Broadcast { destinations: 3 }.route(&batch, &mut out);
        assert_eq!(out.len(), 3);
        for (i, p) in out.iter().enumerate() {
            assert_eq!(p.dest, i);
            assert_eq!(p.points, 2);
            assert_eq!(p.data.as_ptr(), batch.data().as_ptr());
        }
    }
}
