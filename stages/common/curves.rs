//! Training curves of the model stages: one JSON file with every series and one SVG chart per
//! group of series that share an axis.

use std::path::Path;

use super::plot::line_chart;

/// (step, value) points of one named series.
pub type Series = (String, Vec<(u64, f64)>);

/// Writes `<name>.json` ({series: [{step, value}]}) and `<name>.svg` into `dir`.
pub fn write_curves(dir: &Path, name: &str, title: &str, y_label: &str, series: &[Series]) -> anyhow::Result<()> {
    avatar_engine::fsutil::create_private_dir(dir)?;
    let json: serde_json::Map<String, serde_json::Value> = series
        .iter()
        .map(|(k, pts)| (k.clone(), pts.iter().map(|(s, v)| serde_json::json!({"step": s, "value": v})).collect()))
        .collect();
    avatar_engine::fsutil::write_private(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(&json)?)?;
    let lines: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(k, pts)| (k.as_str(), pts.iter().map(|(s, v)| (*s as f64, *v)).collect())).collect();
    line_chart(&dir.join(format!("{name}.svg")), title, "step", y_label, &lines)
}
