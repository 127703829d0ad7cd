//! The stage graph as a small inline SVG: one row per depth (top to bottom), boxes coloured by
//! what happened.

use std::collections::BTreeMap;

use crate::engine::dag::Dag;
use avatar_core::escape::escape;

const BOX_W: f64 = 150.0;
const BOX_H: f64 = 44.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 26.0;

/// `states`: stage → (kind, state) where state is "ran", "cached", "failed", "skipped", "stale".
pub fn dag_svg(dag: &Dag, states: &BTreeMap<String, (String, String)>) -> String {
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
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\
         <defs><marker id=\"arrow\" markerWidth=\"8\" markerHeight=\"8\" refX=\"8\" refY=\"4\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" fill=\"#888\"/></marker></defs>"
    );
    for (a, b, _) in dag.edges() {
        let (ax, ay) = pos[&a];
        let (bx, by) = pos[&b];
        svg += &format!(
            "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#888\" marker-end=\"url(#arrow)\"/>",
            ax + BOX_W / 2.0,
            ay + BOX_H,
            bx + BOX_W / 2.0,
            by
        );
    }
    for n in &order {
        let (x, y) = pos[n];
        let (kind, state) = states.get(n).cloned().unwrap_or_else(|| (String::new(), "stale".into()));
        let fill = match state.as_str() {
            "ran" => "#c8f0c8",
            "cached" => "#e4e4e4",
            "failed" => "#f6b8b8",
            "skipped" => "#f6e0b8",
            _ => "#fff6c0",
        };
        svg += &format!(
            "<rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"{fill}\" stroke=\"#555\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
             <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#444\">{} · {}</text>",
            x + BOX_W / 2.0,
            y + 18.0,
            escape(n),
            x + BOX_W / 2.0,
            y + 35.0,
            escape(&kind),
            escape(&state)
        );
    }
    svg + "</svg>"
}
