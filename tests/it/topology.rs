//! A multi-site network on one machine: two sites, each an application sending
//! plaintext into its own `polymur-proxy`, reach the centre over a WAN link (40 ms
//! each way, 1 % loss); HAProxy passes their HTTPS through to two gateways, which
//! hash-route to three real carbon-caches. During a bounded run one gateway is
//! killed with SIGKILL (and started again on its spool), a carbon-cache is
//! restarted, and the WAN loss rises to 10 % for ten seconds. Afterwards every point
//! a proxy accepted must be in whisper on the carbon-cache the ring names
//! (`polymur-gateway -route-test`), and on no other.
//!
//! ```text
//!  site1 ns: app ─► polymur-proxy ─┐ wan 10.1.0.2 ── 40 ms, 1 % ──┐ central ns: 10.0.0.1:443 haproxy ─► gateway 1 ┐
//!  site2 ns: app ─► polymur-proxy ─┘ wan 10.2.0.2 ── 40 ms, 1 % ──┘                                 └► gateway 2 ┴► carbon a, b, c
//! ```
//! Every address lives in the test's own namespaces; the namespaces, links and
//! processes are removed when the test ends, failed or not. Run it by hand with
//! `scripts/topology`. The last line printed is
//! `topology: accepted N stored N lost N duplicates N misplaced N`.

mod carbon;
mod netns;
mod scenario;
mod wan;

#[test]
fn two_sites_through_haproxy_to_three_carbon_caches_lose_nothing_despite_faults() {
    netns::sweep_stale();
    let outcome = scenario::run();
    // Everything the run made is dropped by now: no namespace of ours may remain.
    let left = netns::ours();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let Some(r) = outcome else {
        return; // skipped, with the reason printed
    };
    println!(
        "topology: accepted {} stored {} lost {} duplicates {} misplaced {}",
        r.accepted, r.stored, r.lost, r.duplicates, r.misplaced
    );
    assert!(r.accepted > 0, "no point was accepted");
    assert_eq!(
        r.accepted, r.sent,
        "the proxies accepted a different count than the apps sent"
    );
    assert_eq!(r.lost, 0, "points lost: {:?}", r.lost_examples);
    assert_eq!(
        r.misplaced, 0,
        "points on the wrong carbon-cache: {:?}",
        r.misplaced_examples
    );
    assert_eq!(r.stored, r.accepted);
}
