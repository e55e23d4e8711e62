//! `-distribution hash-route`: each line to the owners of its metric on a
//! consistent-hash ring, so graphite-web finds every metric where it was stored.

use bytes::Bytes;

use super::ring::{HashKind, HashRing};
use super::{RoutedPart, Router};
use crate::batch::Batch;
use crate::dest::DestAddr;

/// Routes by metric name on a [`HashRing`] with `replication` owners per metric.
pub struct HashRouter {
    ring: HashRing,
    replication: usize,
    members: usize,
}

impl HashRouter {
    /// A router over `members` (in configuration order, which is ring order).
    pub fn new(kind: HashKind, members: &[DestAddr], replication: usize) -> Self {
        HashRouter {
            ring: HashRing::new(kind, members),
            replication: replication.max(1),
            members: members.len(),
        }
    }

    /// The owners of `metric`, as indices into the member list.
    pub fn owners(&self, metric: &[u8], out: &mut Vec<usize>) {
        self.ring.lookup(metric, self.replication, out);
    }
}

impl Router for HashRouter {
    fn route(&self, batch: &Batch, out: &mut Vec<RoutedPart>) {
        if self.members == 0 || batch.is_empty() {
            return;
        }
        // Two passes: look every line up once, remembering its owners and each
        // destination's byte count; then fill buffers allocated at their exact size.
        // A ring can be very uneven (graphite-carbon puts every instance-less member
        // of one host side by side), and a buffer sized for an even share would keep
        // a large allocation alive for a few lines — in the queue and in the writer's
        // resend window — multiplying memory by the unevenness.
        let stride = self.replication.min(self.members);
        let mut owners_of_line: Vec<u32> = Vec::with_capacity(batch.len() * stride);
        let mut bytes = vec![0usize; self.members];
        let mut counts = vec![0u64; self.members];
        let mut owners = Vec::with_capacity(self.replication);
        for (line, metric) in batch.lines() {
            self.ring.lookup(metric, self.replication, &mut owners);
            for k in 0..stride {
                match owners.get(k) {
                    Some(&i) => {
                        bytes[i] += line.len();
                        counts[i] += 1;
                        owners_of_line.push(i as u32);
                    }
                    None => owners_of_line.push(u32::MAX),
                }
            }
        }
        let mut bufs: Vec<Vec<u8>> = bytes.iter().map(|&n| Vec::with_capacity(n)).collect();
        for ((line, _), line_owners) in batch.lines().zip(owners_of_line.chunks_exact(stride)) {
            for &i in line_owners.iter().filter(|&&i| i != u32::MAX) {
                bufs[i as usize].extend_from_slice(line);
            }
        }
        for (dest, (buf, points)) in bufs.into_iter().zip(counts).enumerate() {
            if points > 0 {
                out.push(RoutedPart {
                    dest,
                    data: Bytes::from(buf),
                    points,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_goes_to_exactly_its_owners() {
        let members: Vec<DestAddr> = ["127.0.0.1:2104:a", "127.0.0.1:2204:b", "127.0.0.1:2304:c"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let router = HashRouter::new(HashKind::CarbonCh, &members, 2);
        let text: String = (0..300).map(|i| format!("m.{i} 1 2\n")).collect();
        let (batch, _) = Batch::from_plaintext(text.into_bytes(), None);
        let mut parts = Vec::new();
        router.route(&batch, &mut parts);
        let total: u64 = parts.iter().map(|p| p.points).sum();
        assert_eq!(total, 600, "replication 2: every line twice");
        let mut owners = Vec::new();
        for p in &parts {
            for line in p.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let metric = line.split(|&b| b == b' ').next().unwrap();
                router.owners(metric, &mut owners);
                assert!(owners.contains(&p.dest));
            }
        }
    }
}
