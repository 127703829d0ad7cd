//! The stage graph as a small inline SVG (`dag.svg`): one row per depth (top to bottom),
//! boxes coloured by what happened. This file lays it out; the template draws it.

use std::collections::BTreeMap;

use minijinja::Environment;
use serde::Serialize;

use crate::engine::dag::Dag;

const BOX_W: f64 = 150.0;
const BOX_H: f64 = 44.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 26.0;

/// A coordinate as the SVG writes it: whole pixels.
fn px(v: f64) -> String {
    format!("{v:.0}")
}

#[derive(Serialize)]
struct Edge {
    x1: String,
    y1: String,
    x2: String,
    y2: String,
}

#[derive(Serialize)]
struct StageBox {
    x: String,
    y: String,
    /// Centre line and baselines of the two text lines.
    cx: String,
    name_y: String,
    state_y: String,
    fill: &'static str,
    name: String,
    kind: String,
    state: String,
}

/// `states`: stage → (kind, state) where state is "ran", "cached", "failed", "skipped", "stale".
pub fn dag_svg(
    env: &Environment,
    dag: &Dag,
    states: &BTreeMap<String, (String, String)>,
) -> Result<String, minijinja::Error> {
    let order = dag.topo_order();
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    for n in &order {
        let d = dag.parents(n).iter().map(|p| depth.get(p).copied().unwrap_or(0) + 1).max().unwrap_or(0);
        depth.insert(n.clone(), d);
    }
    let mut in_row: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for n in &order {
        let row = depth[n];
        let col = in_row.entry(row).or_default();
        pos.insert(n.clone(), (10.0 + *col as f64 * (BOX_W + GAP_X), 10.0 + row as f64 * (BOX_H + GAP_Y)));
        *col += 1;
    }
    let width = 20.0 + in_row.values().max().copied().unwrap_or(1) as f64 * (BOX_W + GAP_X) - GAP_X;
    let height = 20.0 + in_row.len().max(1) as f64 * (BOX_H + GAP_Y) - GAP_Y;
    let edges: Vec<Edge> = dag
        .edges()
        .into_iter()
        .map(|(a, b, _)| {
            let ((ax, ay), (bx, by)) = (pos[&a], pos[&b]);
            Edge { x1: px(ax + BOX_W / 2.0), y1: px(ay + BOX_H), x2: px(bx + BOX_W / 2.0), y2: px(by) }
        })
        .collect();
    let boxes: Vec<StageBox> = order
        .iter()
        .map(|n| {
            let (x, y) = pos[n];
            let (kind, state) = states.get(n).cloned().unwrap_or_else(|| (String::new(), "stale".into()));
            let fill = match state.as_str() {
                "ran" => "#c8f0c8",
                "cached" => "#e4e4e4",
                "failed" => "#f6b8b8",
                "skipped" => "#f6e0b8",
                _ => "#fff6c0",
            };
            StageBox {
                x: px(x),
                y: px(y),
                cx: px(x + BOX_W / 2.0),
                name_y: px(y + 18.0),
                state_y: px(y + 35.0),
                fill,
                name: n.clone(),
                kind,
                state,
            }
        })
        .collect();
    env.get_template("dag.svg")?.render(minijinja::context! {
        width => px(width),
        height => px(height),
        box_w => BOX_W.to_string(),
        box_h => BOX_H.to_string(),
        edges,
        boxes,
    })
}
