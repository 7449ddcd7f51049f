//! Counters and gauges, written in Prometheus' text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the request-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    in_flight: AtomicI64,
    /// Regenerations (resolves that were due, registrations, upgrades) running now.
    pub regenerations_in_flight: AtomicI64,
    /// Versions made by resolves and upgrades.
    pub upgrades: AtomicU64,
    /// Requests refused with 503 because the regeneration bound was reached.
    pub regenerations_refused: AtomicU64,
    /// Requests refused with 429 by the per-token rate limit.
    pub rate_limited: AtomicU64,
}

impl Metrics {
    /// A request started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended: `route` is its route template (`/v1/nicks/{nick}/resolve`), never the
    /// path itself, so that the label set stays bounded.
    pub fn end(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let h = d.entry(route.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ociup_http_requests_total HTTP requests answered, by route, method and status.\n\
             # TYPE ociup_http_requests_total counter"
        );
        for ((route, method, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ociup_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ociup_http_request_duration_seconds Time to answer, by route.\n\
             # TYPE ociup_http_request_duration_seconds histogram"
        );
        for (route, h) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let route = escape(route);
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "ociup_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "ociup_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 ociup_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 ociup_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let gauges = [
            (
                "ociup_http_requests_in_flight",
                "HTTP requests being answered.",
                "gauge",
                self.in_flight.load(Ordering::Relaxed).to_string(),
            ),
            (
                "ociup_regenerations_in_flight",
                "Regenerations (due resolves, registrations, upgrades) running.",
                "gauge",
                self.regenerations_in_flight
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "ociup_upgrades_total",
                "New versions made because a base moved.",
                "counter",
                self.upgrades.load(Ordering::Relaxed).to_string(),
            ),
            (
                "ociup_regenerations_refused_total",
                "Requests refused (503) at the bound on concurrent regenerations.",
                "counter",
                self.regenerations_refused
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "ociup_rate_limited_total",
                "Requests refused (429) by the per-token rate limit.",
                "counter",
                self.rate_limited.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, help, kind, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_and_status_and_tracks_in_flight() {
        let m = Metrics::default();
        m.start();
        m.start();
        assert!(m.render().contains("ociup_http_requests_in_flight 2"));
        m.end("/v1/status", "GET", 200, Duration::from_millis(3));
        m.end("/v1/status", "GET", 200, Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains(
            "ociup_http_requests_total{route=\"/v1/status\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "ociup_http_request_duration_seconds_bucket{route=\"/v1/status\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("ociup_http_request_duration_seconds_count{route=\"/v1/status\"} 2"));
        assert!(text.contains("ociup_http_requests_in_flight 0"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
