//! `GET /metrics`: the live counters in the OpenMetrics text format
//! (Prometheus scrapes it), encoded by `prometheus-client` at scrape time
//! straight from the atomics the request path already keeps, so metrics
//! add no work and no lock to a request.

use super::Admin;
use crate::backend::AdminState;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Reads the proxy on every scrape.
#[derive(Debug)]
struct Collector(Arc<Admin>);

/// The text for one scrape.
pub fn render(admin: &Arc<Admin>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector(admin.clone())));
    let mut out = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// One metric family with a value per label set.
fn family<S: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (S, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let admin = &self.0;
        let rt = admin.proxy.runtime();
        let backends = &rt.table.backends;
        let counts = rt.store.counts();
        let route = |b: &crate::backend::Backend| [("route", b.route().to_owned())];
        let sessions = |b: &crate::backend::Backend| super::status::sessions_of(&counts, b.route());
        let c = MetricType::Counter;
        let g = MetricType::Gauge;

        family(
            &mut enc,
            "stickgate_backend_responses",
            "Backend answers by status class",
            c,
            backends.iter().flat_map(|b| {
                let classes = b.stats.traffic.classes();
                CLASSES.iter().zip(classes).map(move |(class, n)| {
                    (
                        [
                            ("route", b.route().to_owned()),
                            ("class", (*class).to_owned()),
                        ],
                        counter(n),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "stickgate_backend_requests",
            "Requests sent to the backend (attempts, including retries)",
            c,
            backends
                .iter()
                .map(|b| (route(b), counter(b.stats.requests.load(Ordering::Relaxed)))),
        )?;
        family(
            &mut enc,
            "stickgate_backend_errors",
            "Attempts that failed on the backend (connect, timeout, reset)",
            c,
            backends
                .iter()
                .map(|b| (route(b), counter(b.stats.errors.load(Ordering::Relaxed)))),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "stickgate_backend_response_seconds",
                "Time from the client request to the backend's response head",
                None,
                MetricType::Histogram,
            )?;
            for b in backends.iter() {
                let l = b.stats.traffic.latency();
                // The encoder accumulates itself: give it per-bucket counts.
                let mut below = 0;
                let per_bucket: Vec<(f64, u64)> = l
                    .buckets
                    .iter()
                    .map(|&(upper, cum)| {
                        let n = cum - below;
                        below = cum;
                        (upper, n)
                    })
                    .collect();
                let labels = route(b);
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        l.sum_secs,
                        l.count,
                        &per_bucket,
                        None,
                    )?;
            }
        }
        family(
            &mut enc,
            "stickgate_backend_sessions",
            "Current sessions bound to the backend",
            g,
            backends
                .iter()
                .map(|b| (route(b), gauge(sessions(b).current as i64))),
        )?;
        family(
            &mut enc,
            "stickgate_backend_sessions_peak_5min",
            "Highest session count over the last five minutes",
            g,
            backends
                .iter()
                .map(|b| (route(b), gauge(sessions(b).peak_5min as i64))),
        )?;
        family(
            &mut enc,
            "stickgate_backend_inflight",
            "Requests in flight on the backend",
            g,
            backends
                .iter()
                .map(|b| (route(b), gauge(b.inflight.load(Ordering::Relaxed) as i64))),
        )?;
        family(
            &mut enc,
            "stickgate_backend_up",
            "1 when health checks consider the backend reachable",
            g,
            backends.iter().map(|b| (route(b), gauge(b.is_up() as i64))),
        )?;
        family(
            &mut enc,
            "stickgate_backend_state",
            "Administrative state (1 for the state in force)",
            g,
            backends.iter().flat_map(|b| {
                let now = b.state();
                AdminState::ALL.into_iter().map(move |s| {
                    (
                        [
                            ("route", b.route().to_owned()),
                            ("state", s.as_str().to_owned()),
                        ],
                        gauge((s == now) as i64),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "stickgate_backend_failovers_in",
            "Orphaned sessions this backend took over",
            c,
            backends.iter().map(|b| {
                (
                    route(b),
                    counter(b.stats.failovers_in.load(Ordering::Relaxed)),
                )
            }),
        )?;
        for (name, help, pick) in [
            (
                "stickgate_backend_rescue_probes",
                "Probes sent because a request waited health.suspect_after for its answer",
                (|b| &b.stats.rescue_probes)
                    as fn(&crate::backend::Backend) -> &std::sync::atomic::AtomicU64,
            ),
            (
                "stickgate_backend_rescue_probes_failed",
                "Rescue probes that failed and marked the backend down",
                |b| &b.stats.rescue_probes_failed,
            ),
            (
                "stickgate_backend_rescued",
                "Requests waiting on the backend when it went down (re-dispatched, or 504)",
                |b| &b.stats.rescued,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                c,
                backends
                    .iter()
                    .map(|b| (route(b), counter(pick(b).load(Ordering::Relaxed)))),
            )?;
        }
        family(
            &mut enc,
            "stickgate_backend_health_transitions",
            "Up/down changes seen by health checks and live traffic",
            c,
            backends
                .iter()
                .map(|b| (route(b), counter(b.stats.health_history.transitions()))),
        )?;
        let failovers: u64 = backends
            .iter()
            .map(|b| b.stats.failovers_in.load(Ordering::Relaxed))
            .sum();
        let none = |v| [([("", ""); 0], v)];
        family(
            &mut enc,
            "stickgate_failovers",
            "Requests served by another node than their session's",
            c,
            none(counter(failovers)),
        )?;
        family(
            &mut enc,
            "stickgate_retries",
            "Upstream attempts beyond the first",
            c,
            none(counter(rt.stats.retries.load(Ordering::Relaxed))),
        )?;
        family(
            &mut enc,
            "stickgate_local_responses",
            "Error answers made by the balancer itself, by status class",
            c,
            ["4xx", "5xx"]
                .into_iter()
                .zip(&rt.stats.local_errors)
                .map(|(class, n)| ([("class", class)], counter(n.load(Ordering::Relaxed)))),
        )?;
        let st = rt.store.status();
        let kind = [("kind", st.kind)];
        family(
            &mut enc,
            "stickgate_store_healthy",
            "1 when the shared store (Redis, peers) is reachable",
            g,
            [(kind, gauge(st.healthy as i64))],
        )?;
        family(
            &mut enc,
            "stickgate_store_sessions",
            "Sessions in this balancer's view of the store",
            g,
            [(kind, gauge(st.sessions as i64))],
        )?;
        family(
            &mut enc,
            "stickgate_store_errors",
            "Failed store operations",
            c,
            [(kind, counter(st.errors))],
        )?;
        family(
            &mut enc,
            "stickgate_store_dropped_writes",
            "Store writes dropped because the write queue was full",
            c,
            [(kind, counter(st.dropped_writes))],
        )?;
        family(
            &mut enc,
            "stickgate_store_rejected_full",
            "Sessions refused because the store was full",
            c,
            [(kind, counter(st.rejected_full))],
        )?;
        family(
            &mut enc,
            "stickgate_store_expired",
            "Sessions expired for idleness",
            c,
            [(kind, counter(st.expired))],
        )?;
        family(
            &mut enc,
            "stickgate_store_peers",
            "Peers seen (multicast) or Redis endpoints",
            g,
            [(kind, gauge(st.peers.len() as i64))],
        )?;
        let stats = &admin.stats;
        family(
            &mut enc,
            "stickgate_connections",
            "Client connections accepted",
            c,
            none(counter(stats.connections.load(Ordering::Relaxed))),
        )?;
        family(
            &mut enc,
            "stickgate_parked_connections",
            "Idle HTTP/1.1 client connections parked, holding no buffers",
            g,
            [(
                [("", ""); 0],
                gauge(stats.parked.load(Ordering::Relaxed) as i64),
            )],
        )?;
        family(
            &mut enc,
            "stickgate_tls_handshake_failures",
            "TLS handshakes that failed",
            c,
            none(counter(
                stats.tls_handshake_failures.load(Ordering::Relaxed),
            )),
        )?;
        for (name, help, value) in [
            (
                "stickgate_header_timeouts",
                "Client connections closed for a request head not complete within server.header_timeout",
                &stats.header_timeouts,
            ),
            (
                "stickgate_idle_timeouts",
                "Keep-alive and HTTP/2 client connections closed after server.idle_timeout",
                &stats.idle_timeouts,
            ),
            (
                "stickgate_connection_limit_reached",
                "Times every server.max_connections slot was taken",
                &stats.connection_limit_reached,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                c,
                none(counter(value.load(Ordering::Relaxed))),
            )?;
        }
        let r = admin.reloader.stats();
        family(
            &mut enc,
            "stickgate_reloads",
            "Configuration reloads by result",
            c,
            [
                ([("result", "ok")], counter(r.ok)),
                ([("result", "failed")], counter(r.failed)),
            ],
        )?;
        Ok(())
    }
}
