//! `GET /metrics`: aggregate counters in the Prometheus text exposition format (0.0.4),
//! written by hand; the format is a few lines of text and needs no client library.
//!
//! Labels are low-cardinality and never personal: a route *template* (`/v1/orders/{id}`,
//! from `routes::route_label`), an HTTP method from a fixed list, a status code, a plugin id,
//! a plugin version, a fault kind. No key, reseller, order, ICCID or subject ever becomes a
//! label.
//!
//! Who may read it: admin keys only (bearer auth, as the rest of the admin API). The
//! gateway has a single listener, usually exposed through a proxy; the numbers say which
//! suppliers are wired in and how much traffic each carries, which is business information.
//! Prometheus sends the key with `authorization: { credentials_file: ... }` in its scrape
//! config. A separate unauthenticated listener for internal networks, or a read-only
//! metrics role, can come later without changing the format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;

use crate::domain::webhooks::WebhookStats;
use crate::plugins::stats::{HistogramSnapshot, LATENCY_BUCKETS, LatencyHistogram};
use crate::plugins::{PluginStatus, Registry};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters of the HTTP API: requests by route, method and status, latency by route.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    counts: Mutex<HttpCounts>,
}

#[derive(Debug, Default)]
struct HttpCounts {
    /// By (route template, method, status).
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    /// By route template.
    latency: BTreeMap<&'static str, LatencyHistogram>,
}

impl HttpMetrics {
    /// Count one answered request.
    pub fn record(&self, route: &'static str, method: &Method, status: u16, elapsed: Duration) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .requests
            .entry((route, method_label(method), status))
            .or_default() += 1;
        counts.latency.entry(route).or_default().observe(elapsed);
    }
}

/// A fixed set of method labels: a client must not be able to mint new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Render every metric family.
pub fn render(
    registry: &Registry,
    http: &HttpMetrics,
    orders: &[(&str, u64)],
    iccid_conflicts: u64,
    webhooks: &WebhookStats,
) -> String {
    let mut out = Exposition::default();
    out.family(
        "simgate_build_info",
        "gauge",
        "The running simgate version (always 1).",
    );
    out.sample(
        "simgate_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    render_http(&mut out, http);
    render_plugins(&mut out, registry);
    out.family(
        "simgate_orders_total",
        "counter",
        "Orders that reached each status since the gateway started.",
    );
    for (status, n) in orders {
        out.sample("simgate_orders_total", &[("status", status)], n);
    }
    out.family(
        "simgate_iccid_conflicts_total",
        "counter",
        "Deliveries refused because a plugin handed out an ICCID another order owns.",
    );
    out.sample("simgate_iccid_conflicts_total", &[], iccid_conflicts);
    render_webhooks(&mut out, webhooks);
    out.text
}

fn render_webhooks(out: &mut Exposition, w: &WebhookStats) {
    out.family(
        "simgate_webhook_attempts_total",
        "counter",
        "Webhook delivery attempts since the gateway started, by outcome.",
    );
    for (outcome, n) in w.attempts {
        out.sample("simgate_webhook_attempts_total", &[("outcome", outcome)], n);
    }
    out.family(
        "simgate_webhook_deferred_total",
        "counter",
        "Deliveries put off because their endpoint already had its share in flight.",
    );
    out.sample("simgate_webhook_deferred_total", &[], w.deferred);
    out.family(
        "simgate_webhook_queue",
        "gauge",
        "Events waiting in the outbox, and deliveries scheduled and not finished.",
    );
    out.sample("simgate_webhook_queue", &[("stage", "outbox")], w.outbox);
    out.sample("simgate_webhook_queue", &[("stage", "delivery")], w.queued);
    out.family(
        "simgate_webhook_oldest_undelivered_seconds",
        "gauge",
        "Age of the oldest event still waiting to be delivered (0 when none waits).",
    );
    out.sample(
        "simgate_webhook_oldest_undelivered_seconds",
        &[],
        w.oldest_undelivered_ms / 1000,
    );
}

fn render_http(out: &mut Exposition, http: &HttpMetrics) {
    let counts = http.counts.lock().unwrap_or_else(|p| p.into_inner());
    out.family(
        "simgate_http_requests_total",
        "counter",
        "HTTP requests answered, by route template, method and status.",
    );
    for ((route, method, status), n) in &counts.requests {
        let status = status.to_string();
        out.sample(
            "simgate_http_requests_total",
            &[("route", route), ("method", method), ("status", &status)],
            *n,
        );
    }
    out.family(
        "simgate_http_request_duration_seconds",
        "histogram",
        "Time to answer an HTTP request, by route template.",
    );
    for (route, h) in &counts.latency {
        out.histogram(
            "simgate_http_request_duration_seconds",
            &[("route", route)],
            &h.snapshot(),
        );
    }
}

fn render_plugins(out: &mut Exposition, registry: &Registry) {
    let plugins = registry.status();
    let each = |out: &mut Exposition,
                name: &str,
                kind: &str,
                help: &str,
                sample: &dyn Fn(&mut Exposition, &PluginStatus)| {
        out.family(name, kind, help);
        for p in &plugins {
            sample(out, p);
        }
    };
    each(
        out,
        "simgate_plugin_info",
        "gauge",
        "The version each plugin serves (always 1).",
        &|out, p| {
            if let Some(v) = &p.version {
                out.sample(
                    "simgate_plugin_info",
                    &[("plugin", &p.id), ("version", v)],
                    1,
                );
            }
        },
    );
    each(
        out,
        "simgate_plugin_serving",
        "gauge",
        "1 while a generation of the plugin serves, 0 when it failed to load.",
        &|out, p| {
            let serving = u64::from(p.generation.is_some());
            out.sample("simgate_plugin_serving", &[("plugin", &p.id)], serving);
        },
    );
    each(
        out,
        "simgate_plugin_reload_failing",
        "gauge",
        "1 while the latest load of the plugin failed (an older generation may still serve).",
        &|out, p| {
            let failing = u64::from(p.last_error.is_some());
            out.sample(
                "simgate_plugin_reload_failing",
                &[("plugin", &p.id)],
                failing,
            );
        },
    );
    each(
        out,
        "simgate_plugin_generation",
        "gauge",
        "The serving generation (bumps on every successful load).",
        &|out, p| {
            if let Some(g) = p.generation {
                out.sample("simgate_plugin_generation", &[("plugin", &p.id)], g);
            }
        },
    );
    each(
        out,
        "simgate_plugin_reloads_total",
        "counter",
        "Loads of the plugin swapped in (ok) or refused (failed).",
        &|out, p| {
            for (result, n) in [("ok", p.reloads.ok), ("failed", p.reloads.failed)] {
                out.sample(
                    "simgate_plugin_reloads_total",
                    &[("plugin", &p.id), ("result", result)],
                    n,
                );
            }
        },
    );
    each(
        out,
        "simgate_plugin_calls_total",
        "counter",
        "Calls into the plugin, across its generations.",
        &|out, p| {
            if let Some(s) = &p.stats {
                out.sample("simgate_plugin_calls_total", &[("plugin", &p.id)], s.calls);
            }
        },
    );
    each(
        out,
        "simgate_plugin_faults_total",
        "counter",
        "Calls the sandbox stopped or refused, by fault kind.",
        &|out, p| {
            for (kind, n) in p.stats.iter().flat_map(|s| &s.faults) {
                out.sample(
                    "simgate_plugin_faults_total",
                    &[("plugin", &p.id), ("kind", kind)],
                    *n,
                );
            }
        },
    );
    each(
        out,
        "simgate_plugin_in_flight",
        "gauge",
        "Calls running now, on any generation of the plugin.",
        &|out, p| {
            if let Some(s) = &p.stats {
                out.sample(
                    "simgate_plugin_in_flight",
                    &[("plugin", &p.id)],
                    s.in_flight,
                );
            }
        },
    );
    each(
        out,
        "simgate_plugin_call_duration_seconds",
        "histogram",
        "Time a plugin call took, including the wait for a concurrency slot.",
        &|out, p| {
            if let Some(s) = &p.stats {
                let h = HistogramSnapshot {
                    buckets: s.latency_buckets.clone(),
                    count: s.calls,
                    sum_seconds: s.latency_sum_seconds,
                };
                out.histogram(
                    "simgate_plugin_call_duration_seconds",
                    &[("plugin", &p.id)],
                    &h,
                );
            }
        },
    );
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// Cumulative `_bucket` lines (ending in `+Inf`), then `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Escape a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_are_counted_by_route_method_and_status() {
        let m = HttpMetrics::default();
        m.record("/v1/orders", &Method::POST, 201, Duration::from_millis(2));
        m.record("/v1/orders", &Method::POST, 201, Duration::from_millis(3));
        m.record(
            "other",
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::ZERO,
        );
        let mut out = Exposition::default();
        render_http(&mut out, &m);
        let text = out.text;
        assert!(text.contains(
            "simgate_http_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"201\"} 2\n"
        ));
        assert!(text.contains("method=\"other\",status=\"404\"} 1\n"));
        assert!(text.contains(
            "simgate_http_request_duration_seconds_bucket{route=\"/v1/orders\",le=\"0.005\"} 2\n"
        ));
        assert!(text.contains(
            "simgate_http_request_duration_seconds_bucket{route=\"/v1/orders\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains("simgate_http_request_duration_seconds_count{route=\"/v1/orders\"} 2\n")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        for ms in [0, 2, 2, 30, 9000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = Exposition::default();
        out.histogram("x", &[], &h.snapshot());
        let counts: Vec<u64> = out
            .text
            .lines()
            .filter(|l| l.starts_with("x_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(counts.last(), Some(&5));
        assert_eq!(counts[counts.len() - 2], 4, "9 s is only in +Inf");
    }

    #[test]
    fn label_values_cannot_break_the_line() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
