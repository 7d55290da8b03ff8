//! The service graph: who calls whom, and how much, from the mesh's standard metrics.
//!
//! Nodes are `APP (WORKLOAD)` (`productpage (productpage-v1)`), as Istio 1.0's servicegraph
//! named them; an edge carries `reqs/sec` (HTTP) or `bytes/sec` (TCP) with six decimals.
//! Unlike 1.0, which summed both reporters and so showed every meshed call twice, a hop's
//! rate is the larger of what its two ends reported (a hop with one proxy has one report).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::prom::Sample;

/// What a request to the servicegraph asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// A Prometheus range (`5m`, `90s`, `1h30m`).
    pub time_horizon: String,
    /// Leave out hops without traffic in the horizon.
    pub filter_empty: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_horizon: "5m".into(),
            filter_empty: false,
        }
    }
}

impl Options {
    /// From a request's query string; a bad `time_horizon` is named.
    pub fn from_query(query: &str) -> Result<Options, String> {
        let mut o = Options::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "time_horizon" if !v.is_empty() => {
                    if !is_duration(v) {
                        return Err(format!(
                            "could not parse time_horizon {v:?}: expected a duration such as 15s, 5m or 1h"
                        ));
                    }
                    v.clone_into(&mut o.time_horizon);
                }
                "filter_empty" => o.filter_empty = v == "true",
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Prometheus' duration syntax: one or more NUMBER UNIT, units ms s m h d w y.
pub fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

const BY: &str = "source_app, source_workload, destination_app, destination_workload";

/// The rate of `metric` per hop over the horizon.
fn hop_query(metric: &str, o: &Options) -> String {
    let mut q = format!(
        "max by ({BY}) (sum by (reporter, {BY}) (rate({metric}[{}])))",
        o.time_horizon
    );
    if o.filter_empty {
        q.push_str(" > 0");
    }
    q
}

pub fn requests_query(o: &Options) -> String {
    hop_query("istio_requests_total", o)
}

pub fn tcp_query(o: &Options) -> String {
    hop_query("istio_tcp_received_bytes_total", o)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    pub nodes: BTreeSet<String>,
    pub edges: Vec<Edge>,
}

/// `app (workload)`, with `unknown` for what the metric does not know.
pub fn node_name(app: Option<&String>, workload: Option<&String>) -> String {
    let known = |v: Option<&String>| {
        v.filter(|s| !s.is_empty())
            .map_or_else(|| "unknown".to_owned(), Clone::clone)
    };
    format!("{} ({})", known(app), known(workload))
}

impl Graph {
    /// Adds an edge per sample, labelled `label` (`reqs/sec`).
    pub fn add_samples(&mut self, samples: &[Sample], label: &str) {
        for s in samples {
            let source = node_name(s.labels.get("source_app"), s.labels.get("source_workload"));
            let target = node_name(
                s.labels.get("destination_app"),
                s.labels.get("destination_workload"),
            );
            self.nodes.insert(source.clone());
            self.nodes.insert(target.clone());
            self.edges.push(Edge {
                source,
                target,
                labels: BTreeMap::from([(label.to_owned(), format!("{:.6}", s.value))]),
            });
        }
    }

    /// `/graph`: `{"nodes": {NAME: {}}, "edges": [{"source", "target", "labels"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.nodes.iter().map(|n| (n.clone(), serde_json::json!({}))).collect::<serde_json::Map<_, _>>(),
            "edges": self.edges.iter().map(|e| serde_json::json!({
                "source": e.source, "target": e.target, "labels": e.labels,
            })).collect::<Vec<_>>(),
        })
    }

    /// `/d3graph`: nodes as a list, links by node index.
    pub fn to_d3_json(&self) -> serde_json::Value {
        let index: BTreeMap<&String, usize> =
            self.nodes.iter().enumerate().map(|(i, n)| (n, i)).collect();
        serde_json::json!({
            "nodes": self.nodes.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            "links": self.edges.iter().filter_map(|e| Some(serde_json::json!({
                "source": index.get(&e.source)?, "target": index.get(&e.target)?, "labels": e.labels,
            }))).collect::<Vec<_>>(),
        })
    }

    /// `/dotgraph`: Graphviz DOT; node ids have `/`, `.` and spaces replaced by `_`.
    pub fn to_dot(&self) -> String {
        let id = |s: &str| s.replace(['/', '.', ' '], "_");
        let mut out = String::from("digraph \"istio-servicegraph\" {\n");
        for e in &self.edges {
            let label: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                out,
                "{:?} -> {:?} [label={:?}];",
                id(&e.source),
                id(&e.target),
                label.join(", ")
            );
        }
        for n in &self.nodes {
            let _ = writeln!(out, "{:?} [label={:?}];", id(n), n);
        }
        out.push_str("}\n");
        out
    }

    /// Each node's column: the longest chain of calls leading to it (cycles broken), so
    /// callers stand left of what they call.
    fn columns(&self) -> BTreeMap<&String, usize> {
        let mut col: BTreeMap<&String, usize> = self.nodes.iter().map(|n| (n, 0)).collect();
        // Bellman-Ford style relaxation, at most |nodes| rounds: a cycle stops growing there.
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for e in &self.edges {
                if e.source == e.target {
                    continue;
                }
                let from = col.get(&e.source).copied().unwrap_or(0);
                if let Some(to) = col.get_mut(&e.target)
                    && *to < from + 1
                    && from + 1 < self.nodes.len()
                {
                    *to = from + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        col
    }

    /// `/dotviz`: the graph drawn as SVG, callers left of callees, edges labelled.
    pub fn to_svg(&self) -> String {
        const W: usize = 260;
        const H: usize = 90;
        let cols = self.columns();
        let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pos: BTreeMap<&String, (usize, usize)> = BTreeMap::new();
        for (n, c) in &cols {
            let r = rows.entry(*c).or_insert(0);
            pos.insert(n, (40 + c * W, 40 + *r * H));
            *r += 1;
        }
        let width = 40 + (rows.len().max(1)) * W;
        let height = 40 + rows.values().copied().max().unwrap_or(1) * H;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n"
        );
        for e in &self.edges {
            let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&e.source), pos.get(&e.target))
            else {
                continue;
            };
            let (x1, y1, x2, y2) = (x1 + 190, y1 + 15, x2, y2 + 15);
            let label: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                out,
                "<g class=\"edge\"><line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#555\" marker-end=\"url(#arrow)\"/><text x=\"{}\" y=\"{}\" fill=\"#333\">{}</text></g>",
                (x1 + x2) / 2 - 40,
                (y1 + y2) / 2 - 4,
                esc(&label.join(", "))
            );
        }
        for (n, (x, y)) in &pos {
            let _ = writeln!(
                out,
                "<g class=\"node\"><rect x=\"{x}\" y=\"{y}\" width=\"190\" height=\"30\" rx=\"6\" fill=\"#e8f0fe\" stroke=\"#3367d6\"/><text x=\"{}\" y=\"{}\">{}</text></g>",
                x + 8,
                y + 19,
                esc(n)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

/// `/dotviz`: the SVG in a page.
pub fn dotviz_page(g: &Graph) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Istio service graph</title></head>\n<body>\n<h3>Service graph</h3>\n{}</body></html>\n",
        g.to_svg()
    )
}

/// `/force/forcegraph.html`: an interactive force-directed drawing of `/d3graph`, with no
/// script from elsewhere (the page works without internet access).
pub const FORCE_PAGE: &str = r##"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Istio service graph</title>
<style>body{font-family:sans-serif;margin:0}#info{padding:8px}svg{display:block}
.node rect{fill:#e8f0fe;stroke:#3367d6;rx:6}.link{stroke:#888}.label{fill:#444;font-size:11px}</style>
</head><body>
<div id="info">Service graph — <span id="horizon"></span> <a href="#" id="reload">reload</a></div>
<svg id="graph" width="1100" height="700"></svg>
<script>
(function () {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const k of ["time_horizon", "filter_empty"]) if (params.has(k)) query.set(k, params.get(k));
  document.getElementById("horizon").textContent = "time horizon " + (params.get("time_horizon") || "5m");
  const svg = document.getElementById("graph");
  const NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    parent.appendChild(e);
    return e;
  }
  function draw(g) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = svg.width.baseVal.value, H = svg.height.baseVal.value;
    const nodes = g.nodes.map((n, i) => ({ name: n.name, x: W / 2 + 200 * Math.cos(i), y: H / 2 + 200 * Math.sin(i), vx: 0, vy: 0 }));
    const links = g.links;
    for (let step = 0; step < 400; step++) {
      for (const a of nodes) for (const b of nodes) {
        if (a === b) continue;
        const dx = a.x - b.x, dy = a.y - b.y, d2 = Math.max(dx * dx + dy * dy, 100);
        a.vx += 4000 * dx / d2; a.vy += 4000 * dy / d2;
      }
      for (const l of links) {
        const s = nodes[l.source], t = nodes[l.target];
        const dx = t.x - s.x, dy = t.y - s.y, d = Math.max(Math.sqrt(dx * dx + dy * dy), 1);
        const f = (d - 220) * 0.02;
        s.vx += f * dx / d; s.vy += f * dy / d; t.vx -= f * dx / d; t.vy -= f * dy / d;
      }
      for (const n of nodes) {
        n.vx += (W / 2 - n.x) * 0.002; n.vy += (H / 2 - n.y) * 0.002;
        n.x = Math.min(W - 100, Math.max(100, n.x + n.vx * 0.5));
        n.y = Math.min(H - 30, Math.max(30, n.y + n.vy * 0.5));
        n.vx *= 0.6; n.vy *= 0.6;
      }
    }
    for (const l of links) {
      const s = nodes[l.source], t = nodes[l.target];
      el("line", { class: "link", x1: s.x, y1: s.y, x2: t.x, y2: t.y }, svg);
      const label = Object.entries(l.labels).map(([k, v]) => k + ": " + v).join(", ");
      el("text", { class: "label", x: (s.x + t.x) / 2, y: (s.y + t.y) / 2 }, svg).textContent = label;
    }
    for (const n of nodes) {
      const g = el("g", { class: "node" }, svg);
      el("rect", { x: n.x - 90, y: n.y - 14, width: 180, height: 28 }, g);
      el("text", { x: n.x - 84, y: n.y + 5 }, g).textContent = n.name;
    }
  }
  function load() {
    fetch("/d3graph?" + query.toString()).then(r => r.json()).then(draw)
      .catch(e => { document.getElementById("info").textContent = "cannot load /d3graph: " + e; });
  }
  document.getElementById("reload").onclick = e => { e.preventDefault(); load(); };
  load();
})();
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(src: (&str, &str), dst: (&str, &str), v: f64) -> Sample {
        Sample {
            labels: BTreeMap::from([
                ("source_app".into(), src.0.into()),
                ("source_workload".into(), src.1.into()),
                ("destination_app".into(), dst.0.into()),
                ("destination_workload".into(), dst.1.into()),
            ]),
            value: v,
        }
    }

    fn bookinfo() -> Graph {
        let mut g = Graph::default();
        g.add_samples(
            &[
                sample(
                    ("istio-ingressgateway", "istio-ingressgateway"),
                    ("productpage", "productpage-v1"),
                    0.2,
                ),
                sample(
                    ("productpage", "productpage-v1"),
                    ("details", "details-v1"),
                    0.2,
                ),
                sample(
                    ("productpage", "productpage-v1"),
                    ("reviews", "reviews-v3"),
                    0.2,
                ),
                sample(("reviews", "reviews-v3"), ("ratings", "ratings-v1"), 0.2),
            ],
            "reqs/sec",
        );
        g
    }

    #[test]
    fn options_parse_and_bad_horizons_are_named() {
        assert_eq!(Options::from_query("").unwrap(), Options::default());
        let o = Options::from_query("time_horizon=15s&filter_empty=true").unwrap();
        assert_eq!((o.time_horizon.as_str(), o.filter_empty), ("15s", true));
        assert!(Options::from_query("time_horizon=1h30m").is_ok());
        let e = Options::from_query("time_horizon=5 minutes").unwrap_err();
        assert!(e.contains("time_horizon"), "{e}");
        assert!(!is_duration("") && !is_duration("m5") && !is_duration("5x"));
        assert_eq!(
            requests_query(&o),
            "max by (source_app, source_workload, destination_app, destination_workload) (sum by (reporter, source_app, source_workload, destination_app, destination_workload) (rate(istio_requests_total[15s]))) > 0"
        );
    }

    #[test]
    fn serializations_agree() {
        let g = bookinfo();
        assert_eq!(g.nodes.len(), 5);
        let j = g.to_json();
        assert_eq!(
            j["edges"][1]["source"], "productpage (productpage-v1)",
            "{j}"
        );
        assert_eq!(j["edges"][1]["labels"]["reqs/sec"], "0.200000");
        assert!(j["nodes"]["ratings (ratings-v1)"].is_object());
        let d3 = g.to_d3_json();
        let names: Vec<&str> = d3["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        for l in d3["links"].as_array().unwrap() {
            let s = names[l["source"].as_u64().unwrap() as usize];
            let t = names[l["target"].as_u64().unwrap() as usize];
            assert!(g.edges.iter().any(|e| e.source == s && e.target == t));
        }
        let dot = g.to_dot();
        assert!(dot.starts_with("digraph \"istio-servicegraph\" {\n"));
        assert!(dot.contains(
            "\"productpage_(productpage-v1)\" -> \"details_(details-v1)\" [label=\"reqs/sec: 0.200000\"];"
        ), "{dot}");
    }

    #[test]
    fn the_drawing_puts_callers_left_of_callees() {
        let g = bookinfo();
        let cols = g.columns();
        let col = |n: &str| cols[&n.to_owned()];
        assert_eq!(col("istio-ingressgateway (istio-ingressgateway)"), 0);
        assert_eq!(col("productpage (productpage-v1)"), 1);
        assert_eq!(col("details (details-v1)"), 2);
        assert_eq!(col("ratings (ratings-v1)"), 3);
        let svg = g.to_svg();
        assert_eq!(svg.matches("class=\"node\"").count(), 5);
        assert_eq!(svg.matches("class=\"edge\"").count(), 4);
        // A cycle does not loop forever.
        let mut c = Graph::default();
        c.add_samples(
            &[
                sample(("a", "a"), ("b", "b"), 1.0),
                sample(("b", "b"), ("a", "a"), 1.0),
            ],
            "reqs/sec",
        );
        assert_eq!(c.columns().len(), 2);
    }
}
