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

/// What one route answered: counts by method and status (a handful: a list), and durations.
#[derive(Debug, Default)]
struct Route {
    answers: Vec<(String, u16, u64)>,
    durations: Histogram,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By route template; one lock per request, no allocation once a route, method and status
    /// have been seen.
    routes: Mutex<BTreeMap<String, Route>>,
    in_flight: AtomicI64,
    /// Regenerations (resolves that were due, registrations, upgrades) running now.
    pub regenerations_in_flight: AtomicI64,
    /// Versions made by resolves, upgrades and runs and recorded by this replica (counted by
    /// `Service::count_upgrade`: not those adopted from another replica).
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
        let secs = took.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), Route::default());
        }
        let Some(r) = routes.get_mut(route) else {
            return;
        };
        match r
            .answers
            .iter_mut()
            .find(|(m, s, _)| *s == status && m == method)
        {
            Some((_, _, n)) => *n += 1,
            None => r.answers.push((method.to_owned(), status, 1)),
        }
        let h = &mut r.durations;
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
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (route, r) in routes.iter() {
            let mut answers: Vec<_> = r.answers.iter().collect();
            answers.sort();
            for (method, status, n) in answers {
                let _ = writeln!(
                    out,
                    "ociup_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ociup_http_request_duration_seconds Time to answer, by route.\n\
             # TYPE ociup_http_request_duration_seconds histogram"
        );
        for (route, r) in routes.iter() {
            let h = &r.durations;
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
                "New versions made because a base moved, recorded by this replica (not those \
                 adopted from another).",
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

    #[test]
    fn answers_are_listed_by_route_method_and_status() {
        let m = Metrics::default();
        for (route, method, status) in [
            ("/v1/status", "GET", 500),
            ("/metrics", "GET", 200),
            ("/v1/status", "GET", 200),
            ("/v1/status", "DELETE", 405),
            ("/v1/status", "GET", 200),
        ] {
            m.start();
            m.end(route, method, status, Duration::from_millis(1));
        }
        let text = m.render();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("ociup_http_requests_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                "ociup_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 1",
                "ociup_http_requests_total{route=\"/v1/status\",method=\"DELETE\",status=\"405\"} 1",
                "ociup_http_requests_total{route=\"/v1/status\",method=\"GET\",status=\"200\"} 2",
                "ociup_http_requests_total{route=\"/v1/status\",method=\"GET\",status=\"500\"} 1",
            ]
        );
        assert!(text.contains("ociup_http_request_duration_seconds_count{route=\"/v1/status\"} 4"));
    }
}
