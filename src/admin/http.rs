//! The admin HTTP endpoint (`-admin-addr`): Prometheus `/metrics`, `/healthz`,
//! `/readyz`, an HTML status page at `/`, and `/api/destinations` mirroring the
//! TCP runtime API. Shared by the gateway and the relay.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::api::DestinationControl;
use super::prometheus;
use crate::dest::Destination;
use crate::keys::KeyCache;
use crate::line::LineError;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// What the admin endpoint reports on.
pub struct AdminState {
    /// `polymur-gateway`, `polymur`, ...
    pub service: &'static str,
    /// Process start.
    pub started: SystemTime,
    /// What the source accepted, refused and found invalid.
    pub stats: Arc<Stats>,
    /// Destinations and their queues; `None` where the daemon has no Graphite
    /// destinations (the proxy).
    pub pipeline: Option<Arc<Pipeline>>,
    /// Runtime destination changes (`/api/destinations`); `None` where the daemon
    /// has no Graphite destinations (the proxy).
    pub control: Option<Arc<dyn DestinationControl>>,
    /// Daemon-specific figures (the proxy's gateway side).
    pub extra: Option<Arc<dyn AdminExtra>>,
    /// The HTTP source's counters (gateway only).
    pub http: Option<Arc<crate::ingest::stats::HttpStats>>,
    /// Keys (gateway only) and a description of their store.
    pub keys: Option<(Arc<KeyCache>, String)>,
    /// Set once every data listener is bound.
    pub listening: Arc<AtomicBool>,
}

impl AdminState {
    /// The destinations in service (none without a pipeline).
    pub fn destinations(&self) -> Vec<Arc<Destination>> {
        self.pipeline
            .as_ref()
            .map_or_else(Vec::new, |p| p.destinations())
    }
}

/// What a daemon adds to the shared admin surface.
pub trait AdminExtra: Send + Sync + 'static {
    /// Appends Prometheus families.
    fn metrics(&self, out: &mut String);
    /// Appends HTML sections to the status page.
    fn status_html(&self, out: &mut String);
    /// A reason the daemon is not ready, if any.
    fn not_ready(&self) -> Option<String> {
        None
    }
}

/// Several [`AdminExtra`]s as one (the gateway's tenants and the routing rules).
pub struct Extras(Vec<Arc<dyn AdminExtra>>);

impl Extras {
    /// The present ones of `parts`; `None` when there are none.
    pub fn of(parts: Vec<Option<Arc<dyn AdminExtra>>>) -> Option<Arc<dyn AdminExtra>> {
        let parts: Vec<_> = parts.into_iter().flatten().collect();
        (!parts.is_empty()).then(|| Arc::new(Extras(parts)) as Arc<dyn AdminExtra>)
    }
}

impl AdminExtra for Extras {
    fn metrics(&self, out: &mut String) {
        self.0.iter().for_each(|e| e.metrics(out));
    }
    fn status_html(&self, out: &mut String) {
        self.0.iter().for_each(|e| e.status_html(out));
    }
    fn not_ready(&self) -> Option<String> {
        self.0.iter().find_map(|e| e.not_ready())
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

/// A time in Unix seconds (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Escapes text for HTML.
fn html(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Prometheus text exposition of every counter (see [`super::prometheus`]).
pub fn render_metrics(state: &AdminState) -> String {
    let mut out = String::with_capacity(4096);
    let stats = &state.stats;
    prometheus::pipeline(&mut out, stats);
    prometheus::destinations(&mut out, &state.destinations());
    prometheus::hash_cache(&mut out);
    if let Some(http) = &state.http {
        prometheus::http(&mut out, http);
    }
    if let Some((keys, _)) = &state.keys {
        prometheus::keys(&mut out, keys, unix_now());
    }
    prometheus::process(&mut out, state.started);
    if let Some(extra) = &state.extra {
        extra.metrics(&mut out);
    }
    out
}

/// Why the process is not ready, or `None` when it is.
pub fn not_ready(state: &AdminState) -> Option<String> {
    let mut why = Vec::new();
    if !state.listening.load(Ordering::Relaxed) {
        why.push("not listening (listeners not bound yet, or closed for shutdown)".to_string());
    }
    if let Some((keys, store)) = &state.keys {
        if keys.last_sync_ok.load(Ordering::Relaxed) == 0 {
            why.push(format!("no key sync has succeeded yet ({store})"));
        }
    }
    let dests = state.destinations();
    if !dests.is_empty()
        && !dests
            .iter()
            .any(|d| d.stats.connected.load(Ordering::Relaxed))
    {
        why.push("no destination is connected".to_string());
    }
    if let Some(reason) = state.extra.as_ref().and_then(|e| e.not_ready()) {
        why.push(reason);
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The HTML status page: refreshes itself every 5 s.
pub fn render_status(state: &AdminState) -> String {
    let stats = &state.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let uptime = SystemTime::now()
        .duration_since(state.started)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let ready = match not_ready(state) {
        None => "<span class=ok>ready</span>".to_string(),
        Some(why) => format!("<span class=bad>not ready: {}</span>", html(&why)),
    };
    let mut page = String::with_capacity(8192);
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
<title>{svc} status</title><style>body{{font:14px system-ui,sans-serif;margin:1.5em}}\
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}\
th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}.ok{{color:#070}}.bad{{color:#b00;font-weight:bold}}</style></head><body>\
<h1>{svc}</h1><p>{ready} &middot; up {uptime} s &middot; refreshes every 5 s</p>",
        svc = state.service
    );
    let _ = write!(
        page,
        "<h2>Traffic</h2><table><tr><th>counter</th><th>value</th></tr>\
<tr><td>points received</td><td>{}</td></tr><tr><td>batches received</td><td>{}</td></tr>\
<tr><td>batches refused (503)</td><td>{}</td></tr>",
        load(&stats.received),
        load(&stats.batches),
        load(&stats.refused),
    );
    if let Some(http) = &state.http {
        let _ = write!(
            page,
            "<tr><td>bodies malformed (400)</td><td>{}</td></tr>\
<tr><td>bodies too large (413)</td><td>{}</td></tr><tr><td>unknown keys (401)</td><td>{}</td></tr>",
            load(&http.malformed),
            load(&http.too_large),
            load(&http.unauthorized),
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Invalid lines</h2><table><tr><th>reason</th><th>lines</th></tr>");
    for e in LineError::ALL {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td></tr>",
            html(&e.to_string()),
            load(&stats.invalid_by_reason[e.index()])
        );
    }
    page.push_str("</table><h2>Destinations</h2><table><tr><th>destination</th><th>state</th><th>queued</th><th>limit</th><th>spool bytes</th><th>forwarded</th><th>errors</th><th>resent</th><th>dropped (overflow)</th><th>dropped at shutdown</th></tr>");
    for d in state.destinations() {
        let up = d.stats.connected.load(Ordering::Relaxed);
        let _ = write!(
            page,
            "<tr><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html(d.name()),
            if up { "ok" } else { "bad" },
            if up { "up" } else { "down" },
            d.queued(),
            d.cap(),
            d.spool().map_or(0, |s| s.backlog()),
            load(&d.stats.sent),
            load(&d.stats.errors),
            load(&d.stats.resent),
            load(&d.stats.dropped),
            load(&d.stats.abandoned),
        );
    }
    page.push_str("</table>");
    if let Some((keys, store)) = &state.keys {
        let ok = keys.last_sync_ok.load(Ordering::Relaxed);
        let failed = keys.last_sync_failed.load(Ordering::Relaxed);
        let tenants = keys.tenants();
        let _ = write!(
            page,
            "<h2>API keys</h2><p>store: {} &middot; {} key names &middot; last good sync: {} &middot; state: {}</p>\
<table><tr><th>key name</th><th>points received</th></tr>",
            html(store),
            tenants.len(),
            if ok == 0 { "never".to_string() } else { format!("{} s ago", unix(SystemTime::now()).saturating_sub(ok)) },
            if ok > 0 && ok >= failed { "<span class=ok>in sync</span>" } else { "<span class=bad>failing, serving the cached keys</span>" },
        );
        for t in tenants {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td></tr>",
                html(&t.name),
                t.received.load(Ordering::Relaxed)
            );
        }
        page.push_str("</table>");
    }
    if let Some(extra) = &state.extra {
        extra.status_html(&mut page);
    }
    page.push_str("<p><a href=/metrics>/metrics</a> &middot; <a href=/api/destinations>/api/destinations</a></p></body></html>\n");
    page
}

async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let plain = "text/plain; charset=utf-8";
    Ok(match (method, path.as_str()) {
        (Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(&state),
        ),
        (Method::GET, "/healthz") => text(StatusCode::OK, plain, "ok\n".into()),
        (Method::GET, "/readyz") => match not_ready(&state) {
            None => text(StatusCode::OK, plain, "ready\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                plain,
                format!("not ready: {why}\n"),
            ),
        },
        (Method::GET, "/") => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render_status(&state),
        ),
        (_, p) if p.starts_with("/api/destinations") && state.control.is_none() => text(
            StatusCode::NOT_FOUND,
            plain,
            "this daemon has no Graphite destinations\n".into(),
        ),
        (Method::GET, "/api/destinations") => text(
            StatusCode::OK,
            "application/json",
            format!(
                "{}\n",
                state
                    .control
                    .as_ref()
                    .map(|c| c.getdest())
                    .unwrap_or_default()
            ),
        ),
        (m @ (Method::PUT | Method::DELETE), p) if p.starts_with("/api/destinations") => {
            let Some(control) = state.control.clone() else {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    plain,
                    "404 page not found\n".into(),
                ));
            };
            // The destination is the path's last segment or the body.
            let from_path = p
                .trim_start_matches("/api/destinations")
                .trim_start_matches('/')
                .to_string();
            let dest = if from_path.is_empty() {
                match Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                    Err(_) => String::new(),
                }
            } else {
                from_path
            };
            if dest.is_empty() {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    plain,
                    "Must provide destination\n".into(),
                ));
            }
            let result = if m == Method::PUT {
                control.putdest(&dest)
            } else {
                control.deldest(&dest)
            };
            match result {
                Ok(()) if m == Method::PUT => text(
                    StatusCode::OK,
                    plain,
                    format!("Registered destination: {dest}\n"),
                ),
                Ok(()) => text(
                    StatusCode::OK,
                    plain,
                    format!("Unregistered destination: {dest}\n"),
                ),
                Err(e) => text(StatusCode::BAD_REQUEST, plain, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, plain, "404 page not found\n".into()),
    })
}

/// Serves the admin endpoint until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: Shutdown) {
    loop {
        let Some((stream, _)) = crate::net::accept(&listener, &mut shutdown).await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
