//! kubectl-shaped output: resource references, ages, and tables with per-kind columns.

use std::time::SystemTime;

use keel_config::Kind;
use serde_json::Value;

/// `virtualservice.networking.istio.io`, `service`, `deployment.apps`: how kubectl names a
/// kind in its messages.
pub fn kind_ref(kind: Kind) -> String {
    let info = kind.info();
    let lower = info.name.to_ascii_lowercase();
    if info.group.is_empty() {
        lower
    } else {
        format!("{lower}.{}", info.group)
    }
}

/// Kubernetes' human durations: `49s`, `5m12s`, `15m`, `3h20m`, `15h`, `2d4h`, `38d`.
pub fn human_age(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        format!("{m}m{}s", secs % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        format!("{d}d{}h", h % 24)
    } else {
        format!("{d}d")
    }
}

fn age_of(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".to_owned();
    };
    let Ok(t) = ts.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".to_owned();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let then = u64::try_from(t.as_second()).unwrap_or(0);
    human_age(now.saturating_sub(then))
}

fn s<'a>(obj: &'a Value, ptr: &str) -> Option<&'a str> {
    obj.pointer(ptr).and_then(Value::as_str)
}

fn json_list(obj: &Value, ptr: &str) -> String {
    match obj.pointer(ptr) {
        Some(Value::Array(a)) => serde_json::to_string(a).unwrap_or_default(),
        _ => String::new(),
    }
}

fn selector_text(obj: &Value, ptr: &str) -> String {
    match obj.pointer(ptr) {
        Some(Value::Object(m)) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".to_owned(),
    }
}

/// How `get` prints a table.
#[derive(Clone, Debug, Default)]
pub struct TableOptions {
    pub all_namespaces: bool,
    pub wide: bool,
    /// `-L`: label keys shown as columns.
    pub label_columns: Vec<String>,
    pub show_labels: bool,
}

/// Column headers and one row per object, as kubectl would print them for `kind`.
pub fn table(kind: Kind, items: &[Value], opts: &TableOptions) -> String {
    let mut headers: Vec<String> = Vec::new();
    if opts.all_namespaces && kind.is_namespaced() {
        headers.push("NAMESPACE".into());
    }
    headers.push("NAME".into());
    let (extra, wide_extra) = kind_columns(kind);
    headers.extend(extra.iter().map(|h| (*h).to_owned()));
    headers.push("AGE".into());
    if opts.wide {
        headers.extend(wide_extra.iter().map(|h| (*h).to_owned()));
    }
    for l in &opts.label_columns {
        headers.push(l.to_ascii_uppercase());
    }
    if opts.show_labels {
        headers.push("LABELS".into());
    }
    let mut rows = vec![headers];
    for obj in items {
        let mut row = Vec::new();
        if opts.all_namespaces && kind.is_namespaced() {
            row.push(s(obj, "/metadata/namespace").unwrap_or("").to_owned());
        }
        row.push(s(obj, "/metadata/name").unwrap_or("").to_owned());
        let (cells, wide_cells) = kind_cells(kind, obj);
        row.extend(cells);
        row.push(age_of(obj));
        if opts.wide {
            row.extend(wide_cells);
        }
        for l in &opts.label_columns {
            row.push(
                obj.pointer("/metadata/labels")
                    .and_then(|m| m.get(l))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        if opts.show_labels {
            row.push(selector_text(obj, "/metadata/labels"));
        }
        rows.push(row);
    }
    render(&rows)
}

fn kind_columns(kind: Kind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        Kind::VirtualService => (&["GATEWAYS", "HOSTS"], &[]),
        Kind::DestinationRule => (&["HOST"], &[]),
        Kind::ServiceEntry => (&["HOSTS", "LOCATION", "RESOLUTION"], &[]),
        Kind::Service => (
            &["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
            &["SELECTOR"],
        ),
        Kind::Deployment => (
            &["READY", "UP-TO-DATE", "AVAILABLE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Pod => (&["READY", "STATUS", "RESTARTS"], &["IP"]),
        Kind::Namespace => (&["STATUS"], &[]),
        _ => (&[], &[]),
    }
}

fn kind_cells(kind: Kind, obj: &Value) -> (Vec<String>, Vec<String>) {
    let n = |ptr: &str| obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
    match kind {
        Kind::VirtualService => (
            vec![
                json_list(obj, "/spec/gateways"),
                json_list(obj, "/spec/hosts"),
            ],
            vec![],
        ),
        Kind::DestinationRule => (vec![s(obj, "/spec/host").unwrap_or("").to_owned()], vec![]),
        Kind::ServiceEntry => (
            vec![
                json_list(obj, "/spec/hosts"),
                s(obj, "/spec/location")
                    .unwrap_or("MESH_EXTERNAL")
                    .to_owned(),
                s(obj, "/spec/resolution").unwrap_or("NONE").to_owned(),
            ],
            vec![],
        ),
        Kind::Service => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".to_owned());
            (
                vec![
                    s(obj, "/spec/type").unwrap_or("ClusterIP").to_owned(),
                    s(obj, "/spec/clusterIP").unwrap_or("<none>").to_owned(),
                    "<none>".to_owned(),
                    ports,
                ],
                vec![selector_text(obj, "/spec/selector")],
            )
        }
        Kind::Deployment => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let containers = obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let names = containers
                .iter()
                .filter_map(|c| c.get("name")?.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let images = containers
                .iter()
                .filter_map(|c| c.get("image")?.as_str())
                .collect::<Vec<_>>()
                .join(",");
            (
                vec![
                    format!("{}/{want}", n("/status/readyReplicas")),
                    n("/status/updatedReplicas").to_string(),
                    n("/status/availableReplicas").to_string(),
                ],
                vec![
                    names,
                    images,
                    selector_text(obj, "/spec/selector/matchLabels"),
                ],
            )
        }
        Kind::Pod => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(statuses.len());
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c.get("restartCount")?.as_i64())
                .sum();
            (
                vec![
                    format!("{ready}/{total}"),
                    s(obj, "/status/phase").unwrap_or("Pending").to_owned(),
                    restarts.to_string(),
                ],
                vec![s(obj, "/status/podIP").unwrap_or("<none>").to_owned()],
            )
        }
        Kind::Namespace => (
            vec![s(obj, "/status/phase").unwrap_or("Active").to_owned()],
            vec![],
        ),
        _ => (vec![], vec![]),
    }
}

/// Left-aligned columns three spaces apart, like kubectl's tabwriter.
pub fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_age(49), "49s");
        assert_eq!(human_age(312), "5m12s");
        assert_eq!(human_age(15 * 60), "15m");
        assert_eq!(human_age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(human_age(15 * 3600), "15h");
        assert_eq!(human_age(2 * 86400 + 4 * 3600), "2d4h");
        assert_eq!(human_age(38 * 86400), "38d");
    }

    #[test]
    fn names_kinds_like_kubectl() {
        assert_eq!(
            kind_ref(Kind::VirtualService),
            "virtualservice.networking.istio.io"
        );
        assert_eq!(kind_ref(Kind::Service), "service");
        assert_eq!(kind_ref(Kind::Deployment), "deployment.apps");
        assert_eq!(kind_ref(Kind::Metric), "metric.config.istio.io");
    }

    #[test]
    fn namespace_table_with_label_column() {
        let items = vec![
            json!({"metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}),
            json!({"metadata": {"name": "istio-system"}}),
        ];
        let out = table(
            Kind::Namespace,
            &items,
            &TableOptions {
                label_columns: vec!["istio-injection".into()],
                ..Default::default()
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME           STATUS   AGE         ISTIO-INJECTION"
        );
        assert_eq!(lines[1], "default        Active   <unknown>   enabled");
        assert_eq!(lines[2], "istio-system   Active   <unknown>");
    }
}
