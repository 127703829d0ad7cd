//! Small, dependency-free SVG charts shared by every stage that draws: loss curves (sft),
//! reward/KL curves (ppo), length histograms and bar charts (split stats).
//!
//! Hand-written SVG keeps the build lean and renders CJK labels as plain text (the viewer's
//! fonts do the shaping). Every function has a `*_svg` twin returning the document as a string.
//!
//! API (stable; other stages call it):
//! - [`line_chart`]`(path, title, x_label, y_label, &[("train", vec![(x, y), …]), …])`
//! - [`histogram`]`(path, title, x_label, &values, bins)`
//! - [`bar_chart`]`(path, title, &[("label", value), …])` (horizontal bars, in the given order)

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
pub use avatar_core::escape::escape;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const FONT: &str = "font-family=\"'Noto Sans CJK SC','Source Han Sans SC','PingFang SC','Microsoft YaHei',sans-serif\"";
/// Colour-blind friendly palette (Okabe–Ito), cycled per series.
const PALETTE: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

/// A line chart of one or more (x, y) series. Non-finite points are skipped.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    write_svg(path, &line_chart_svg(title, x_label, y_label, series))
}

/// A histogram of `values` in `bins` equal-width bins over their range. Non-finite values are skipped.
pub fn histogram(path: &Path, title: &str, x_label: &str, values: &[f64], bins: usize) -> anyhow::Result<()> {
    write_svg(path, &histogram_svg(title, x_label, values, bins))
}

/// Horizontal bars, one per (label, value), top to bottom in the given order.
pub fn bar_chart<S: AsRef<str>>(path: &Path, title: &str, labels_and_values: &[(S, f64)]) -> anyhow::Result<()> {
    write_svg(path, &bar_chart_svg(title, labels_and_values))
}

fn write_svg(path: &Path, svg: &str) -> anyhow::Result<()> {
    avatar_engine::fsutil::write_private(path, svg).with_context(|| format!("writing plot {}", path.display()))
}

/// Counts of `values` in `bins` equal-width bins: returns (lower edge, width, counts).
pub fn bin_counts(values: &[f64], bins: usize) -> (f64, f64, Vec<u64>) {
    let bins = bins.max(1);
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (mut lo, mut hi) = finite.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0, vec![0; bins]);
    }
    if hi <= lo {
        lo -= 0.5;
        hi += 0.5;
    }
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in finite {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    (lo, width, counts)
}

pub fn line_chart_svg(title: &str, x_label: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_range, y_range) = ranges(points);
    let frame = Frame::new(x_range, y_range, 70.0);
    let mut svg = open(title);
    frame.axes(&mut svg, x_label, y_label);
    if x_range.is_none() {
        frame.no_data(&mut svg);
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in pts {
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            let _ = write!(d, "{}{:.1},{:.1} ", if pen_down { 'L' } else { 'M' }, frame.px(x), frame.py(y));
            pen_down = true;
        }
        if pts.len() == 1 {
            let (x, y) = pts[0];
            if x.is_finite() && y.is_finite() {
                let _ =
                    writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, frame.px(x), frame.py(y));
            }
        }
        let _ = writeln!(svg, r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="1.6"/>"#, d.trim_end());
        // Legend, top right, one row per series.
        let ly = frame.top + 14.0 + 18.0 * i as f64;
        let lx = frame.right - 150.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="12" {FONT}>{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(name)
        );
    }
    close(svg)
}

pub fn histogram_svg(title: &str, x_label: &str, values: &[f64], bins: usize) -> String {
    let (lo, width, counts) = bin_counts(values, bins);
    let n = counts.len();
    let max_count = counts.iter().copied().max().unwrap_or(0) as f64;
    let any = values.iter().any(|v| v.is_finite());
    let frame = Frame::new(Some((lo, lo + width * n as f64)), Some((0.0, max_count.max(1.0))), 70.0);
    let mut svg = open(title);
    frame.axes(&mut svg, x_label, "count");
    if !any {
        frame.no_data(&mut svg);
    }
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let x0 = frame.px(lo + width * i as f64);
        let x1 = frame.px(lo + width * (i + 1) as f64);
        let y = frame.py(c as f64);
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" stroke="white" stroke-width="0.5"><title>{}</title></rect>"#,
            x0,
            (x1 - x0).max(0.5),
            (frame.bottom - y).max(0.0),
            PALETTE[0],
            c
        );
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" {FONT}>n = {total}</text>"#,
        frame.right - 4.0,
        frame.top + 14.0
    );
    close(svg)
}

pub fn bar_chart_svg<S: AsRef<str>>(title: &str, labels_and_values: &[(S, f64)]) -> String {
    let labels: Vec<String> = labels_and_values.iter().map(|(l, _)| truncate_label(l.as_ref(), 24)).collect();
    // CJK glyphs are about twice as wide as Latin ones at the same font size.
    let label_px = labels.iter().map(|l| display_width(l)).max().unwrap_or(0) as f64 * 6.5;
    let left = (label_px + 16.0).clamp(60.0, 280.0);
    let max_value = labels_and_values.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let frame = Frame::new(Some((0.0, max_value.max(f64::MIN_POSITIVE))), None, left);
    let mut svg = open(title);
    frame.x_axis(&mut svg, "");
    if labels_and_values.is_empty() {
        frame.no_data(&mut svg);
    }
    let rows = labels_and_values.len().max(1) as f64;
    let row_h = (frame.bottom - frame.top) / rows;
    for (i, ((_, value), label)) in labels_and_values.iter().zip(&labels).enumerate() {
        let y = frame.top + row_h * i as f64;
        let v = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let w = frame.px(v) - frame.left;
        let bar_h = (row_h * 0.72).max(1.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{}"><title>{}</title></rect>"#,
            frame.left,
            y + (row_h - bar_h) / 2.0,
            w.max(0.0),
            PALETTE[0],
            fmt_value(*value)
        );
        let font = (row_h * 0.6).clamp(6.0, 12.0);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="{font:.1}" text-anchor="end" dominant-baseline="middle" {FONT}>{}</text>"#,
            frame.left - 6.0,
            y + row_h / 2.0,
            escape(label)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="{font:.1}" dominant-baseline="middle" fill="#333" {FONT}>{}</text>"##,
            frame.left + w.max(0.0) + 4.0,
            y + row_h / 2.0,
            fmt_value(*value)
        );
    }
    close(svg)
}

/// Data ranges of finite points, or None when there are none.
fn ranges<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (Option<(f64, f64)>, Option<(f64, f64)>) {
    let mut xr: Option<(f64, f64)> = None;
    let mut yr: Option<(f64, f64)> = None;
    for &(x, y) in points {
        xr = Some(xr.map_or((x, x), |(a, b)| (a.min(x), b.max(x))));
        yr = Some(yr.map_or((y, y), |(a, b)| (a.min(y), b.max(y))));
    }
    (xr, yr)
}

/// Plot area and data→pixel mapping, with "nice" axis ticks.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: Axis,
    y: Axis,
}

struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    fn new(range: Option<(f64, f64)>) -> Axis {
        let (mut lo, mut hi) = range.unwrap_or((0.0, 1.0));
        if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_step((hi - lo) / 5.0);
        Axis { lo: (lo / step).floor() * step, hi: (hi / step).ceil() * step, step }
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(move |i| self.lo + self.step * i as f64)
    }
}

impl Frame {
    fn new(x: Option<(f64, f64)>, y: Option<(f64, f64)>, left: f64) -> Frame {
        Frame { left, right: WIDTH - 24.0, top: 44.0, bottom: HEIGHT - 56.0, x: Axis::new(x), y: Axis::new(y) }
    }

    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.lo) / (self.x.hi - self.x.lo) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        self.bottom - (y - self.y.lo) / (self.y.hi - self.y.lo) * (self.bottom - self.top)
    }

    fn axes(&self, svg: &mut String, x_label: &str, y_label: &str) {
        self.x_axis(svg, x_label);
        for t in self.y.ticks() {
            let y = self.py(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" {FONT}>{}</text>"##,
                self.left,
                self.right,
                self.left - 6.0,
                y + 4.0,
                fmt_tick(t, self.y.step)
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{l:.1}" y1="{t:.1}" x2="{l:.1}" y2="{b:.1}" stroke="#333"/><text transform="translate(16,{:.1}) rotate(-90)" font-size="13" text-anchor="middle" {FONT}>{}</text>"##,
            (self.top + self.bottom) / 2.0,
            escape(y_label),
            l = self.left,
            t = self.top,
            b = self.bottom
        );
    }

    fn x_axis(&self, svg: &mut String, x_label: &str) {
        for t in self.x.ticks() {
            let x = self.px(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle" {FONT}>{}</text>"##,
                self.bottom,
                self.bottom + 5.0,
                self.bottom + 18.0,
                fmt_tick(t, self.x.step)
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" {FONT}>{}</text>"##,
            self.left,
            self.right,
            (self.left + self.right) / 2.0,
            HEIGHT - 14.0,
            escape(x_label),
            b = self.bottom
        );
    }

    fn no_data(&self, svg: &mut String) {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="14" fill="#888" text-anchor="middle" {FONT}>no data</text>"##,
            (self.left + self.right) / 2.0,
            (self.top + self.bottom) / 2.0
        );
    }
}

fn open(title: &str) -> String {
    let mut svg = String::with_capacity(8192);
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">"##
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="26" font-size="16" font-weight="bold" text-anchor="middle" {FONT}>{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    svg
}

fn close(mut svg: String) -> String {
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    if v.abs() >= 1e6 || (step < 1e-4 && v != 0.0) {
        return format!("{v:.2e}");
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v:.3}") }
}

fn truncate_label(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

/// Approximate width in Latin-character units: wide (CJK) characters count twice.
fn display_width(s: &str) -> usize {
    s.chars().map(|c| if (c as u32) >= 0x1100 { 2 } else { 1 }).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_has_one_path_per_series_and_escapes_cjk_labels() {
        let svg = line_chart_svg(
            "损失 <loss>",
            "step",
            "loss",
            &[
                ("train", vec![(0.0, 2.0), (1.0, 1.5), (2.0, f64::NAN), (3.0, 1.0)]),
                ("验证", vec![(0.0, 2.1), (3.0, 1.2)]),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path ").count(), 2);
        assert!(svg.contains("损失 &lt;loss&gt;"));
        assert!(svg.contains("验证"));
        // NaN breaks the line into two pieces: two moves in the first path.
        let first_path = svg.lines().find(|l| l.starts_with("<path")).unwrap();
        assert_eq!(first_path.matches('M').count(), 2);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn histogram_counts_every_finite_value_once() {
        let values: Vec<f64> = (0..100).map(|i| i as f64).chain([f64::INFINITY]).collect();
        let (lo, width, counts) = bin_counts(&values, 10);
        assert_eq!(lo, 0.0);
        assert!((width - 9.9).abs() < 1e-9);
        assert_eq!(counts.iter().sum::<u64>(), 100);
        assert_eq!(counts, vec![10; 10]);
        let svg = histogram_svg("reply length", "chars", &values, 10);
        assert_eq!(svg.matches("<rect x=").count(), 10);
        assert!(svg.contains("n = 100"));
    }

    #[test]
    fn degenerate_inputs_still_render() {
        for svg in [
            histogram_svg("t", "x", &[], 5),
            histogram_svg("t", "x", &[3.0, 3.0], 0),
            line_chart_svg("t", "x", "y", &[]),
            line_chart_svg("t", "x", "y", &[("one", vec![(1.0, 1.0)])]),
            bar_chart_svg::<&str>("t", &[]),
        ] {
            assert!(svg.contains("</svg>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn bar_chart_keeps_order_and_truncates_long_labels() {
        let long = "很长的联系人名字".repeat(5);
        let svg = bar_chart_svg("top contacts", &[("张三", 30.0), (long.as_str(), 10.0)]);
        let a = svg.find("张三").unwrap();
        let b = svg.find('…').unwrap();
        assert!(a < b);
        assert!(svg.contains(">30<"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(fmt_tick(0.5, 0.5), "0.5");
        assert_eq!(fmt_tick(20.0, 10.0), "20");
    }
}
