//! A 15-minute rate history per tenant and per destination, drawn as inline SVG
//! sparklines on the status page (no script, no external asset: the page stays one
//! self-contained document that works behind any proxy or air gap).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Time between samples.
pub const STEP: Duration = Duration::from_secs(10);
/// Samples kept: 15 minutes.
pub const SAMPLES: usize = 90;

/// One counter's recent rates.
#[derive(Debug, Default)]
struct Track {
    /// The counter at the previous sample (`None` before the first).
    last: Option<u64>,
    /// Points per second in each step, oldest first.
    rates: VecDeque<f64>,
}

/// Rates by name (`tenant:<key name>` or `dest:<destination>`).
#[derive(Debug, Default)]
pub struct History {
    tracks: Mutex<BTreeMap<String, Track>>,
}

impl History {
    /// Records that counter `name` stands at `total` now, `step` after the previous sample.
    pub fn sample(&self, name: &str, total: u64, step: Duration) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let t = tracks.entry(name.to_string()).or_default();
        if let Some(last) = t.last {
            let rate = total.saturating_sub(last) as f64 / step.as_secs_f64().max(0.001);
            if t.rates.len() == SAMPLES {
                t.rates.pop_front();
            }
            t.rates.push_back(rate);
        }
        t.last = Some(total);
    }

    /// The rates of `name`, oldest first.
    pub fn rates(&self, name: &str) -> Vec<f64> {
        let tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        tracks
            .get(name)
            .map(|t| t.rates.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// An inline SVG sparkline of `rates` (points/s), with `limit` as a dashed line when
/// given. The vertical scale is the larger of the highest rate and the limit.
pub fn sparkline(rates: &[f64], limit: Option<f64>) -> String {
    const W: f64 = 180.0;
    const H: f64 = 32.0;
    let top = rates.iter().copied().chain(limit).fold(1.0_f64, f64::max);
    let y = |v: f64| H - 2.0 - (v / top) * (H - 4.0);
    let mut svg = format!(
        "<svg class=spark xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
viewBox=\"0 0 {W} {H}\" role=img><title>last 15 minutes, up to {top:.0} points/s</title>\
<rect width=\"{W}\" height=\"{H}\" fill=\"#f7f7f7\"/>"
    );
    if let Some(l) = limit {
        let _ = write!(
            svg,
            "<line x1=\"0\" x2=\"{W}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#b00\" stroke-dasharray=\"3,2\"/>",
            y(l)
        );
    }
    let dx = W / (SAMPLES - 1) as f64;
    let start = SAMPLES.saturating_sub(rates.len());
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.1},{:.1}", (start + i) as f64 * dx, y(v)))
        .collect();
    if !points.is_empty() {
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"#06c\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        // The latest rate as a dot, so that a history of one sample still shows.
        let last = rates.len() - 1;
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#06c\"/>",
            (start + last) as f64 * dx,
            y(rates[last])
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_counters_and_a_bounded_window() {
        let h = History::default();
        for i in 0..100u64 {
            h.sample("t", i * 100, Duration::from_secs(10));
        }
        let r = h.rates("t");
        assert_eq!(r.len(), SAMPLES);
        assert!(r.iter().all(|&v| v == 10.0));
        let svg = sparkline(&r, Some(20.0));
        assert!(
            svg.starts_with("<svg")
                && svg.contains("<polyline")
                && svg.contains("stroke-dasharray")
        );
    }
}
