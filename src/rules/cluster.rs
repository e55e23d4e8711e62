//! Compiled clusters: which members of a cluster a metric goes to.
//!
//! Placement follows carbon-c-relay with every member up: `forward` and `file` send to
//! every member; `any_of` picks member `fnv1a32(name) % members` (so a metric sticks to one
//! cache); `failover` the first member; the hash kinds ask the rings of
//! [`crate::route::ring`] (carbon-c-relay's own `carbon_ch`, `fnv1a_ch`, `jump_fnv1a_ch`
//! placement, checked against it in `tests/ring_fixtures.rs`). Moving a down member's
//! share (any_of, failover, `dynamic`) is the destination layer's job: it knows liveness.

use std::collections::HashMap;

use super::ast::{ClusterDef, ClusterKind, Member};
use super::RuleError;
use crate::dest::addr::DestAddr;
use crate::route::ring::{HashKind, HashRing};

/// One cluster ready to place metrics.
#[derive(Debug)]
pub struct Cluster {
    /// The name `send to` uses.
    pub name: String,
    pub kind: ClusterKind,
    /// Members in configuration order; placement returns indices into this.
    pub members: Vec<Member>,
    /// Copies per metric (hash kinds; 1 otherwise).
    pub replication: usize,
    /// `dynamic`: a down member's metrics may go to the others.
    pub dynamic: bool,
    /// `useall`: a host name stands for every address it resolves to.
    pub useall: bool,
    ring: Option<HashRing>,
}

impl Cluster {
    /// Compiles a definition (its members were validated by the parser).
    pub fn new(def: &ClusterDef) -> Cluster {
        let ring = def.kind.is_hash().then(|| {
            let addrs: Vec<DestAddr> = def
                .members
                .iter()
                .filter_map(|m| match m {
                    Member::Tcp(a) => Some(a.clone()),
                    Member::File(_) => None,
                })
                .collect();
            let kind = match def.kind {
                ClusterKind::CarbonCh => HashKind::CarbonChCRelay,
                ClusterKind::Fnv1aCh => HashKind::Fnv1aCh,
                _ => HashKind::JumpFnv1aCh,
            };
            HashRing::new(kind, &addrs)
        });
        Cluster {
            name: def.name.clone(),
            kind: def.kind.clone(),
            members: def.members.clone(),
            replication: def.replication,
            dynamic: def.dynamic,
            useall: def.useall,
            ring,
        }
    }

    /// The default cluster of a daemon without `-config`: `-destinations` under
    /// `-distribution` (`forward` for broadcast, a ring of `ring` for hash-route). The ring
    /// kind is the flag's own (graphite-carbon's `carbon_ch` by default), not the one a
    /// configuration's `carbon_ch` means, so the old flags place metrics exactly as before.
    pub fn from_flags(
        name: &str,
        members: &[DestAddr],
        ring: Option<HashKind>,
        replication: usize,
    ) -> Cluster {
        let kind = match ring {
            None => ClusterKind::Forward,
            Some(HashKind::Fnv1aCh) => ClusterKind::Fnv1aCh,
            Some(HashKind::JumpFnv1aCh) => ClusterKind::JumpFnv1aCh,
            Some(_) => ClusterKind::CarbonCh,
        };
        Cluster {
            name: name.to_string(),
            kind,
            members: members.iter().cloned().map(Member::Tcp).collect(),
            replication: replication.max(1),
            dynamic: false,
            useall: false,
            ring: ring.map(|k| HashRing::new(k, members)),
        }
    }

    /// True when a down member's share may go to the other members: `any_of`,
    /// `failover`, and hash clusters marked `dynamic` (or every hash cluster when
    /// `all_dynamic`, `-hash-failover`).
    pub fn moves_when_down(&self, all_dynamic: bool) -> bool {
        match self.kind {
            ClusterKind::AnyOf | ClusterKind::Failover => true,
            ref k if k.is_hash() => self.dynamic || all_dynamic,
            _ => false,
        }
    }

    /// [`placement`](Self::placement) with the members for which `down(i)` is true
    /// avoided, as carbon-c-relay does for a cluster that [moves](Self::moves_when_down):
    /// `failover` takes the first live member, `any_of` spreads a down member's metrics over
    /// the live ones, a hash cluster takes the next live members on its ring. With every
    /// member down the placement stays as it is (the lines wait in its queue).
    pub fn placement_live(&self, name: &[u8], down: &dyn Fn(usize) -> bool, out: &mut Vec<usize>) {
        self.placement(name, out);
        if !out.iter().any(|&m| down(m)) {
            return;
        }
        let n = self.members.len();
        let live = (0..n).filter(|&m| !down(m)).count();
        if live == 0 {
            return;
        }
        match self.kind {
            ClusterKind::Failover => {
                out.clear();
                out.extend((0..n).find(|&m| !down(m)));
            }
            ClusterKind::AnyOf => {
                let k = fnv1a_32(name) as usize % live;
                out.clear();
                out.extend((0..n).filter(|&m| !down(m)).nth(k));
            }
            _ => {
                if let Some(r) = &self.ring {
                    r.lookup(name, n, out);
                    out.retain(|&m| !down(m));
                    out.truncate(self.replication.max(1));
                }
            }
        }
    }

    /// The ring's kind (hash clusters).
    pub fn ring_kind(&self) -> Option<HashKind> {
        self.ring.as_ref().map(HashRing::kind)
    }

    /// Fills `out` (cleared first) with the indices of the members `name` goes to, in
    /// carbon-c-relay's order. Does not allocate once `out` has room for the replication.
    pub fn placement(&self, name: &[u8], out: &mut Vec<usize>) {
        out.clear();
        let n = self.members.len();
        if n == 0 {
            return;
        }
        match self.kind {
            ClusterKind::Forward | ClusterKind::File { .. } if n == 1 => out.push(0),
            ClusterKind::Forward | ClusterKind::File { .. } => out.extend(0..n),
            ClusterKind::AnyOf => out.push(fnv1a_32(name) as usize % n),
            ClusterKind::Failover => out.push(0),
            _ => {
                if let Some(r) = &self.ring {
                    r.lookup(name, self.replication, out);
                }
            }
        }
    }
}

/// carbon-c-relay's load-time checks across clusters. A `host:port` is one server (one
/// queue) however many clusters name it, so it has one instance (the ring key) and, as
/// any_of/failover move a down server's queue to the others, such a server cannot also
/// belong to another cluster; a hash cluster cannot replicate to more members than it has.
pub fn check(defs: &[ClusterDef]) -> Result<(), RuleError> {
    let mut seen: HashMap<(String, u16), Option<String>> = HashMap::new();
    for def in defs {
        let n = def.members.len();
        if def.kind.is_hash() && def.replication > n {
            return Err(def.pos.error(&format!(
                "invalid cluster '{}': replication count ({}) is larger than the number of servers ({n})",
                def.name, def.replication
            )));
        }
        for m in &def.members {
            let Member::Tcp(a) = m else { continue };
            let key = (a.host.clone(), a.port);
            let Some(prev) = seen.get(&key) else {
                seen.insert(key, a.instance.clone());
                continue;
            };
            let hp = a.host_port();
            let msg = match (prev, &a.instance) {
                (None, Some(i)) => Some(format!("cannot set instance '{i}' for server {hp}: server was previously defined without instance")),
                (Some(p), None) => Some(format!("cannot define server {hp} without instance: server was previously defined with instance '{p}'")),
                (Some(p), Some(i)) if p != i => Some(format!("cannot set instance '{i}' for server {hp}: server was previously defined with instance '{p}'")),
                _ => None,
            };
            if let Some(msg) = msg {
                return Err(def.pos.error(&msg));
            }
            if matches!(def.kind, ClusterKind::AnyOf | ClusterKind::Failover) {
                return Err(def.pos.error(&format!(
                    "cannot share server {hp} with any_of/failover cluster '{}'",
                    def.name
                )));
            }
        }
    }
    Ok(())
}

/// 32-bit FNV-1a, what carbon-c-relay's `any_of` hashes the metric name with.
fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parser::parse_str;

    #[test]
    fn placement_per_kind() {
        let cfg = parse_str(
            "t",
            "cluster f forward 10.0.0.1 10.0.0.2:2004;\ncluster a any_of 10.0.0.1 10.0.0.2;\n\
             cluster o failover 10.0.0.3 10.0.0.4;\ncluster c carbon_ch replication 2 10.0.0.5=a 10.0.0.6=b 10.0.0.7=c;",
        )
        .unwrap();
        let cl: Vec<Cluster> = cfg.clusters.iter().map(Cluster::new).collect();
        let mut out = Vec::new();
        cl[0].placement(b"x", &mut out);
        assert_eq!(out, vec![0, 1]);
        cl[1].placement(b"x", &mut out);
        assert_eq!(out, vec![fnv1a_32(b"x") as usize % 2]);
        cl[2].placement(b"x", &mut out);
        assert_eq!(out, vec![0]);
        cl[3].placement(b"x", &mut out);
        assert_eq!(out.len(), 2);
        assert_ne!(out[0], out[1]);
    }

    #[test]
    fn a_down_member_share_goes_to_live_members_and_comes_back() {
        let cfg = parse_str(
            "t",
            "cluster a any_of 10.0.0.1 10.0.0.2 10.0.0.3;
cluster o failover 10.0.0.3 10.0.0.4;
             cluster c carbon_ch replication 2 dynamic 10.0.0.5=a 10.0.0.6=b 10.0.0.7=c;",
        )
        .unwrap();
        let cl: Vec<Cluster> = cfg.clusters.iter().map(Cluster::new).collect();
        let (mut up, mut live) = (Vec::new(), Vec::new());
        for i in 0..200 {
            let name = format!("m.{i}");
            for c in &cl {
                c.placement(name.as_bytes(), &mut up);
                let dead = up[0];
                c.placement_live(name.as_bytes(), &|m| m == dead, &mut live);
                assert!(
                    !live.contains(&dead),
                    "{}: {name} avoids the down member",
                    c.name
                );
                assert_eq!(live.len(), up.len(), "{}: as many copies", c.name);
                c.placement_live(name.as_bytes(), &|_| false, &mut live);
                assert_eq!(live, up, "{}: all up, placement as configured", c.name);
                c.placement_live(name.as_bytes(), &|_| true, &mut live);
                assert_eq!(
                    live, up,
                    "{}: all down, the lines wait where they were",
                    c.name
                );
            }
        }
        assert!(cl[2].moves_when_down(false) && cl[0].moves_when_down(false));
    }
}
