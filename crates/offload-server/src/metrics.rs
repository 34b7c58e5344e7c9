//! Prometheus metrics at `/metrics` (OpenMetrics text). No user names appear in labels:
//! the endpoint needs no token, so it says how the system does, not who does what.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    moves: Family<Labels, Counter>,
    downtime: Histogram,
    queries: Family<Labels, Counter>,
    containers: Family<Labels, Gauge>,
    agents: Gauge,
    usage: Family<Labels, Gauge<f64, AtomicU64>>,
    forecast: Family<Labels, Gauge<f64, AtomicU64>>,
    pressure: Family<Labels, Gauge>,
    node_usage: Family<Labels, Gauge<f64, AtomicU64>>,
    node_pressure: Family<Labels, Gauge>,
    node_capacity: Family<Labels, Gauge<f64, AtomicU64>>,
    node_schedulable: Family<Labels, Gauge>,
    recovery_point: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("offload");
        let moves = Family::<Labels, Counter>::default();
        registry.register(
            "moves",
            "Moves that ended, by direction and outcome",
            moves.clone(),
        );
        let downtime = Histogram::new([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "move_downtime_seconds",
            "What users waited during completed moves: stop, final sync and start",
            downtime.clone(),
        );
        let queries = Family::<Labels, Counter>::default();
        registry.register(
            "queries",
            "Queries asked and how they ended",
            queries.clone(),
        );
        let containers = Family::<Labels, Gauge>::default();
        registry.register(
            "containers",
            "Containers by location and state",
            containers.clone(),
        );
        let agents = Gauge::default();
        registry.register("agents_connected", "Connected edge agents", agents.clone());
        let recovery_point = Family::<Labels, Gauge>::default();
        registry.register(
            "recovery_point_seconds",
            "For each container at the edge, seconds of its work the cloud may not have yet",
            recovery_point.clone(),
        );
        let usage = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "monitor_usage_ratio",
            "Sampled usage of the host or pool, by resource",
            usage.clone(),
        );
        let forecast = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "monitor_forecast_ratio",
            "Forecast usage at the horizon, by resource",
            forecast.clone(),
        );
        let pressure = Family::<Labels, Gauge>::default();
        registry.register(
            "monitor_pressure",
            "1 while a resource is under pressure",
            pressure.clone(),
        );
        let node_usage = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_usage_ratio",
            "On a cluster: offload's containers on a node against its capacity, by node and resource",
            node_usage.clone(),
        );
        let node_pressure = Family::<Labels, Gauge>::default();
        registry.register(
            "node_pressure",
            "On a cluster: 1 while a node's resource is under pressure",
            node_pressure.clone(),
        );
        let node_capacity = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_capacity",
            "On a cluster: what a node's load is measured against (cpu in cores, memory in bytes)",
            node_capacity.clone(),
        );
        let node_schedulable = Family::<Labels, Gauge>::default();
        registry.register(
            "node_schedulable",
            "On a cluster: 1 while containers may be placed on a node",
            node_schedulable.clone(),
        );
        Metrics {
            registry,
            node_usage,
            node_pressure,
            node_capacity,
            node_schedulable,
            moves,
            downtime,
            queries,
            containers,
            agents,
            recovery_point,
            usage,
            forecast,
            pressure,
        }
    }

    pub fn move_ended(&self, direction: &str, outcome: &str, downtime_ms: Option<u64>) {
        self.moves
            .get_or_create(&labels(&[("direction", direction), ("outcome", outcome)]))
            .inc();
        if outcome == "done"
            && let Some(ms) = downtime_ms
        {
            self.downtime.observe(ms as f64 / 1000.0);
        }
    }

    /// `state` is `asked` when a query is sent, then how it ended.
    pub fn query(&self, state: &str) {
        self.queries
            .get_or_create(&labels(&[("state", state)]))
            .inc();
    }

    pub fn monitor(&self, resource: &str, usage: f64, forecast: f64, pressure: bool) {
        let l = labels(&[("resource", resource)]);
        self.usage.get_or_create(&l).set(usage);
        self.forecast.get_or_create(&l).set(forecast);
        self.pressure.get_or_create(&l).set(i64::from(pressure));
    }

    /// The nodes of a cluster as the monitor last saw them; a node that left the cluster
    /// leaves the metrics.
    pub fn nodes(&self, nodes: &[offload_monitor::NodeStatus]) {
        self.node_usage.clear();
        self.node_pressure.clear();
        self.node_capacity.clear();
        self.node_schedulable.clear();
        for node in nodes {
            let name = node.name.as_str();
            self.node_schedulable
                .get_or_create(&labels(&[("node", name)]))
                .set(i64::from(node.schedulable));
            for (resource, capacity) in [("cpu", node.cpus), ("memory", node.mem_bytes as f64)] {
                self.node_capacity
                    .get_or_create(&labels(&[("node", name), ("resource", resource)]))
                    .set(capacity);
            }
            for r in &node.resources {
                let l = labels(&[("node", name), ("resource", &r.resource.to_string())]);
                self.node_usage.get_or_create(&l).set(r.usage);
                self.node_pressure
                    .get_or_create(&l)
                    .set(i64::from(r.pressure));
            }
        }
    }

    /// Sets each edge container's recovery point: (container, owner, seconds).
    pub fn set_recovery_points(&self, points: &[(String, String, u64)]) {
        self.recovery_point.clear();
        for (container, owner, secs) in points {
            self.recovery_point
                .get_or_create(&labels(&[("container", container), ("owner", owner)]))
                .set(i64::try_from(*secs).unwrap_or(i64::MAX));
        }
    }

    /// Renders the metrics, after setting the gauges read at scrape time.
    pub fn render(&self, containers: &[(String, String, i64)], agents: usize) -> String {
        self.containers.clear();
        for (location, state, count) in containers {
            self.containers
                .get_or_create(&labels(&[("location", location), ("state", state)]))
                .set(*count);
        }
        self.agents.set(agents as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node_status;

    #[test]
    fn renders_counters_gauges_and_the_downtime_histogram() {
        let metrics = Metrics::new();
        metrics.move_ended("to_edge", "done", Some(700));
        metrics.move_ended("to_edge", "rolled_back", None);
        metrics.query("asked");
        metrics.monitor("cpu", 0.9, 0.95, true);
        metrics.set_recovery_points(&[("c1".into(), "alice".into(), 42)]);
        let text = metrics.render(&[("cloud".into(), "running".into(), 3)], 1);
        assert!(
            text.contains(r#"offload_recovery_point_seconds{container="c1",owner="alice"} 42"#),
            "{text}"
        );
        assert!(
            text.contains(r#"offload_moves_total{direction="to_edge",outcome="done"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"offload_queries_total{state="asked"} 1"#));
        assert!(text.contains(r#"offload_containers{location="cloud",state="running"} 3"#));
        assert!(text.contains("offload_agents_connected 1"));
        assert!(text.contains(r#"offload_monitor_pressure{resource="cpu"} 1"#));
        assert!(text.contains("offload_move_downtime_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn nodes_are_labelled_by_name_and_a_node_that_left_disappears() {
        let metrics = Metrics::new();
        metrics.nodes(&[
            node_status("n0", 0.875, true),
            node_status("n1", 0.25, false),
        ]);
        let text = metrics.render(&[], 0);
        for line in [
            r#"offload_node_usage_ratio{node="n0",resource="memory"} 0.875"#,
            r#"offload_node_pressure{node="n0",resource="memory"} 1"#,
            r#"offload_node_pressure{node="n1",resource="memory"} 0"#,
            r#"offload_node_capacity{node="n1",resource="memory"} 41943040.0"#,
            r#"offload_node_capacity{node="n1",resource="cpu"} 2.0"#,
            r#"offload_node_schedulable{node="n0"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        metrics.nodes(&[node_status("n1", 0.25, false)]);
        let text = metrics.render(&[], 0);
        assert!(!text.contains(r#"node="n0""#), "{text}");
        assert!(
            text.contains(r#"offload_node_schedulable{node="n1"} 1"#),
            "{text}"
        );
    }
}
