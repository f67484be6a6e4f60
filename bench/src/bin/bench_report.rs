//! Draws the load benchmarks' results as SVG charts.
//!
//! `scripts/bench-echo.sh`, `scripts/bench-kv.sh` and `scripts/bench-proxy.sh`
//! write a JSON file beside their markdown table (`docs/bench-*.json`, the
//! schema is [`Report`]). For each file this program writes three charts into
//! the output directory (`docs/charts/` by default), named after the file's
//! `benchmark` field:
//!
//! - `NAME-throughput.svg`: messages or requests per second;
//! - `NAME-cpu.svg`: server CPU time per message or request;
//! - `NAME-latency.svg`: p50 and p99 latency.
//!
//! Every chart has one panel per scenario and, in each panel, one bar per
//! server (the median over the runs; a dot per single run where the file has
//! them). Each panel has its own y scale, since scenarios differ by orders of
//! magnitude (one connection against 64 pipelined ones): compare servers
//! within a panel, not panels with each other.
//!
//! ```text
//! scripts/bench-report.sh
//! cargo run -p weave-bench --release --bin bench_report -- --out docs/charts docs/bench-echo.json
//! ```

use std::error::Error;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

/// Draws SVG charts (throughput, CPU per request, latency) from the JSON the
/// load benchmark scripts write.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory the SVG files go to (created if missing).
    #[arg(long, default_value = "docs/charts")]
    out: PathBuf,
    /// JSON files written by scripts/bench-{echo,kv,proxy}.sh.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// One benchmark run of a script: what was measured, how, and the figures.
///
/// ```json
/// {"benchmark": "kv", "title": "KV: the kv example against memcached",
///  "source": "scripts/bench-kv.sh", "date": "2026-12-01", "cores": 2,
///  "server_threads": 2, "connections": 50, "secs": 4, "rounds": 3,
///  "scenario_label": "pipeline depth", "server_label": "server",
///  "throughput_unit": "requests/s", "cpu_unit": "µs/request",
///  "baseline": "memcached",
///  "records": [{"scenario": "depth 1", "server": "kv", "stat": "median",
///               "throughput": 40622, "p50_us": 1161, "p99_us": 2913,
///               "cpu_us": 20.84, "errors": null}]}
/// ```
#[derive(Debug, Deserialize)]
struct Report {
    /// Short name: the charts' file names start with it (`[a-z0-9_-]+`).
    benchmark: String,
    /// The charts' title.
    title: String,
    /// Where the figures come from (the script, or the markdown they were
    /// converted from).
    source: String,
    /// Day of the runs, `YYYY-MM-DD`.
    date: String,
    /// CPU cores of the machine.
    #[serde(default)]
    cores: Option<u32>,
    /// CPU model, as /proc/cpuinfo names it.
    #[serde(default)]
    cpu_model: Option<String>,
    /// Worker threads of every server.
    #[serde(default)]
    server_threads: Option<u32>,
    /// Worker threads of the load generator.
    #[serde(default)]
    client_threads: Option<u32>,
    /// Client connections, where every scenario has the same number.
    #[serde(default)]
    connections: Option<u32>,
    /// Measured seconds per run.
    #[serde(default)]
    secs: Option<f64>,
    /// Runs per server and scenario (the medians are over these).
    #[serde(default)]
    rounds: Option<u32>,
    /// What a scenario is ("conns / size / in flight", "pipeline depth").
    scenario_label: String,
    /// What the compared programs are ("server", "proxy").
    server_label: String,
    /// Unit of `throughput` ("msgs/s", "requests/s").
    throughput_unit: String,
    /// Unit of `cpu_us` ("µs/msg", "µs/request").
    cpu_unit: String,
    /// The server the ratios are relative to (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    baseline: Option<String>,
    /// Medians and single runs, in the order of the markdown table.
    records: Vec<Record>,
}

/// Whether a record is the median over the runs or one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stat {
    /// The median over `rounds` runs (what the markdown table shows).
    Median,
    /// One run; `round` says which.
    Run,
}

/// The figures of one server in one scenario. A figure the run could not
/// produce ("na" in the markdown) is `null`.
#[derive(Debug, Deserialize)]
struct Record {
    /// The scenario, as the markdown table writes it.
    scenario: String,
    /// The server (or proxy).
    server: String,
    /// Median or single run.
    stat: Stat,
    /// 1-based run number of a `run` record (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    round: Option<u32>,
    /// Messages or requests per second (`throughput_unit`).
    #[serde(default)]
    throughput: Option<f64>,
    /// Median latency, microseconds.
    #[serde(default)]
    p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    #[serde(default)]
    p99_us: Option<f64>,
    /// 99.9th percentile latency, microseconds (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    p999_us: Option<f64>,
    /// Server CPU time (user + system) per message or request, microseconds.
    #[serde(default)]
    cpu_us: Option<f64>,
    /// `throughput` over the baseline's (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    throughput_ratio: Option<f64>,
    /// `p99_us` over the baseline's (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    p99_ratio: Option<f64>,
    /// `cpu_us` over the baseline's (not charted).
    #[serde(default)]
    #[allow(dead_code)]
    cpu_ratio: Option<f64>,
    /// Connections that failed.
    #[serde(default)]
    #[allow(dead_code)]
    errors: Option<u64>,
}

/// A report that cannot be charted.
#[derive(Debug)]
struct BadReport(String);

impl fmt::Display for BadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for BadReport {}

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Okabe-Ito colours (told apart with most colour-vision deficiencies),
/// one per server in the order of the report; more servers cycle.
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(120, 120, 120),
];

const WIDTH: u32 = 960;
const HEADER: u32 = 104;
const PANEL_HEIGHT: u32 = 260;
const FONT: &str = "sans-serif";
// Font sizes below are what plotters is given; its SVG backend writes them
// divided by 1.24 (24 becomes a 19 px title).

/// A quantity drawn as one bar per server: how to read it from a record,
/// and whether its bars are the light shade.
struct Metric {
    value: fn(&Record) -> Option<f64>,
    light: bool,
}

/// One chart: a title line, the y axis description, and one or two metrics
/// side by side per server.
struct ChartSpec<'a> {
    file: String,
    title: String,
    y_desc: String,
    /// Divides every value (µs to ms for long latencies).
    scale: f64,
    metrics: &'a [Metric],
    note: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut failed = false;
    for file in &args.files {
        match load(file).and_then(|report| render(&report, &args.out)) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
            }
            Err(e) => {
                eprintln!("bench_report: {}: {e}", file.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads and checks one JSON report.
fn load(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path)?;
    parse(&text)
}

/// Parses a report and checks what the charts rely on: a file-name-safe
/// `benchmark`, at least one median, finite non-negative figures.
fn parse(text: &str) -> Result<Report> {
    let report: Report = serde_json::from_str(text)?;
    let name_ok = !report.benchmark.is_empty()
        && report
            .benchmark
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(BadReport(format!(
            "benchmark name {:?} must be non-empty and use only a-z, 0-9, '-' and '_'",
            report.benchmark
        ))
        .into());
    }
    if !report.records.iter().any(|r| r.stat == Stat::Median) {
        return Err(BadReport("no median records to chart".into()).into());
    }
    for r in &report.records {
        for v in [r.throughput, r.p50_us, r.p99_us, r.p999_us, r.cpu_us]
            .into_iter()
            .flatten()
        {
            if !v.is_finite() || v < 0.0 {
                return Err(BadReport(format!(
                    "{} / {}: figure {v} is not a finite non-negative number",
                    r.scenario, r.server
                ))
                .into());
            }
        }
    }
    Ok(report)
}

/// Items in order of first appearance.
fn ordered<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Writes the three charts of `report` into `out`; returns their paths.
fn render(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    let name = &report.benchmark;
    let longest_latency = report
        .records
        .iter()
        .flat_map(|r| [r.p50_us, r.p99_us])
        .flatten()
        .fold(0.0, f64::max);
    let (latency_unit, latency_scale) = if longest_latency >= 10_000.0 {
        ("ms", 1000.0)
    } else {
        ("µs", 1.0)
    };
    let has_p50 = report.records.iter().any(|r| r.p50_us.is_some());
    let throughput = [Metric {
        value: |r| r.throughput,
        light: false,
    }];
    let cpu = [Metric {
        value: |r| r.cpu_us,
        light: false,
    }];
    let p50 = Metric {
        value: |r| r.p50_us,
        light: false,
    };
    let p99 = Metric {
        value: |r| r.p99_us,
        light: true,
    };
    // Figures taken before p50 was kept have p99 only: no empty p50 slots.
    let latency = if has_p50 { vec![p50, p99] } else { vec![p99] };
    let specs = [
        ChartSpec {
            file: format!("{name}-throughput.svg"),
            title: format!("{}: throughput", report.title),
            y_desc: report.throughput_unit.clone(),
            scale: 1.0,
            metrics: &throughput,
            note: None,
        },
        ChartSpec {
            file: format!("{name}-cpu.svg"),
            title: format!("{}: {} CPU time", report.title, report.server_label),
            y_desc: format!("{} CPU {}", report.server_label, report.cpu_unit),
            scale: 1.0,
            metrics: &cpu,
            note: Some("lower is better".into()),
        },
        ChartSpec {
            file: format!("{name}-latency.svg"),
            title: format!("{}: latency", report.title),
            y_desc: format!("latency ({latency_unit})"),
            scale: latency_scale,
            metrics: &latency,
            note: Some(if has_p50 {
                "solid: p50, light: p99; lower is better".into()
            } else {
                "p99 (p50 was not recorded); lower is better".into()
            }),
        },
    ];
    let mut written = Vec::new();
    for spec in &specs {
        let path = out.join(&spec.file);
        draw_chart(report, spec, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// The line under the title: when, where and how the figures were taken.
fn subtitle(report: &Report) -> String {
    let mut parts = vec![report.date.clone()];
    if let Some(cores) = report.cores {
        match &report.cpu_model {
            Some(model) => parts.push(format!("{cores} cores ({model})")),
            None => parts.push(format!("{cores} cores")),
        }
    }
    let threads = |n: u32| if n == 1 { "thread" } else { "threads" };
    if let Some(n) = report.server_threads {
        parts.push(format!("{n} {} {}", report.server_label, threads(n)));
    }
    if let Some(n) = report.client_threads {
        parts.push(format!("{n} load generator {}", threads(n)));
    }
    if let Some(n) = report.connections {
        parts.push(format!("{n} connections"));
    }
    match (report.rounds, report.secs) {
        (Some(r), Some(s)) => parts.push(format!("medians of {r} runs of {s} s")),
        (Some(r), None) => parts.push(format!("medians of {r} runs")),
        _ => {}
    }
    if report.records.iter().any(|r| r.stat == Stat::Run) {
        parts.push("dots: single runs".into());
    }
    parts.join(" · ")
}

fn draw_chart(report: &Report, spec: &ChartSpec<'_>, path: &Path) -> Result<()> {
    let scenarios = ordered(report.records.iter().map(|r| r.scenario.as_str()));
    let servers = ordered(report.records.iter().map(|r| r.server.as_str()));
    let columns = scenarios.len().clamp(1, 2);
    let rows = scenarios.len().div_ceil(columns);
    let height = HEADER + PANEL_HEIGHT * rows as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    draw_header(report, spec, &servers, &header)?;
    let panels = body.split_evenly((rows, columns));
    for (scenario, area) in scenarios.iter().zip(panels.iter()) {
        draw_panel(report, spec, scenario, &servers, area)?;
    }
    root.present()?;
    Ok(())
}

/// Title, subtitle and the legend (a colour per server, the shades).
fn draw_header(
    report: &Report,
    spec: &ChartSpec<'_>,
    servers: &[&str],
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<()> {
    let title = (FONT, 24).into_font().style(FontStyle::Bold);
    let small = (FONT, 15).into_font().color(&RGBColor(80, 80, 80));
    let legend = TextStyle::from((FONT, 16).into_font());
    area.draw(&Text::new(spec.title.clone(), (12, 8), title))?;
    area.draw(&Text::new(subtitle(report), (12, 34), small.clone()))?;
    area.draw(&Text::new(
        format!("source: {}", report.source),
        (12, 53),
        small.clone(),
    ))?;
    let mut x = 12i32;
    let y = 78i32;
    for (i, server) in servers.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        area.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], colour.filled()))?;
        x += 20;
        area.draw(&Text::new(server.to_string(), (x, y), legend.clone()))?;
        let (w, _) = area.estimate_text_size(server, &legend)?;
        x += w as i32 + 18;
    }
    if let Some(note) = &spec.note {
        area.draw(&Text::new(note.clone(), (x + 10, y + 1), small))?;
    }
    Ok(())
}

/// Mixes `c` with white: the light shade of a server's colour.
fn light(c: RGBColor) -> RGBColor {
    let mix = |v: u8| v + ((255 - v) as f64 * 0.55) as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// A short axis or bar label: 1.05M, 240k, 18.8, 0.87.
fn compact(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e5 {
        trim(format!("{:.0}", v / 1e3)) + "k"
    } else if a >= 1e3 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.2}"))
    }
}

/// One scenario: per server one bar per metric, the median's value above
/// it, and a dot per single run.
fn draw_panel(
    report: &Report,
    spec: &ChartSpec<'_>,
    scenario: &str,
    servers: &[&str],
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<()> {
    // bars[server][metric]: the median; runs[server][metric]: single runs.
    let bars: Vec<Vec<Option<f64>>> = servers
        .iter()
        .map(|s| {
            spec.metrics
                .iter()
                .map(|m| {
                    records_of(report, scenario, s, Stat::Median)
                        .find_map(m.value)
                        .map(|v| v / spec.scale)
                })
                .collect()
        })
        .collect();
    let runs: Vec<Vec<Vec<f64>>> = servers
        .iter()
        .map(|s| {
            spec.metrics
                .iter()
                .map(|m| {
                    records_of(report, scenario, s, Stat::Run)
                        .filter_map(m.value)
                        .map(|v| v / spec.scale)
                        .collect()
                })
                .collect()
        })
        .collect();
    let top = bars
        .iter()
        .flatten()
        .flatten()
        .chain(runs.iter().flatten().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };

    let caption = format!("{}: {scenario}", report.scenario_label);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 17))
        .margin(10)
        .x_label_area_size(26)
        .y_label_area_size(64)
        // A usize range includes its end: 0..n-1 is n segments.
        .build_cartesian_2d((0..servers.len() - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .x_labels(servers.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => servers.get(*i).map(|s| s.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(6)
        .y_label_formatter(&|v| compact(*v))
        .y_desc(spec.y_desc.as_str())
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 14))
        .draw()?;

    // Pixel width of one server's slot, to place sub-bars' labels and dots.
    let slot = chart.plotting_area().dim_in_pixel().0 as f64 / servers.len() as f64;
    let k = spec.metrics.len();
    // Space on each side of a server's bars: an eighth of its slot.
    let gap = ((slot / 8.0).round() as u32).max(4);
    let value_font =
        TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, per_metric) in bars.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (j, (metric, value)) in spec.metrics.iter().zip(per_metric).enumerate() {
            let fill = if metric.light { light(colour) } else { colour };
            // Sub-bar j of k spans [left, right) of the slot.
            let (left, right, lm, rm) = bar_span(i, j, k, gap);
            // The bar's pixel centre from the slot's left edge.
            let from = slot * j as f64 / k as f64 + lm as f64;
            let to = slot * (j + 1) as f64 / k as f64 - rm as f64;
            let centre = ((from + to) / 2.0).round() as i32;
            if let Some(v) = *value {
                let mut bar =
                    Rectangle::new([(left.clone(), 0.0), (right.clone(), v)], fill.filled());
                bar.set_margin(0, 0, lm, rm);
                chart.draw_series(std::iter::once(bar))?;
                if metric.light {
                    let mut edge =
                        Rectangle::new([(left, 0.0), (right, v)], colour.stroke_width(1));
                    edge.set_margin(0, 0, lm, rm);
                    chart.draw_series(std::iter::once(edge))?;
                }
                let highest = runs[i][j].iter().fold(v, |a, &b| a.max(b));
                let label = EmptyElement::at((SegmentValue::Exact(i), highest))
                    + Text::new(compact(v), (centre, -3), value_font.clone());
                chart.draw_series(std::iter::once(label))?;
            } else {
                let label = EmptyElement::at((SegmentValue::Exact(i), 0.0))
                    + Text::new("n/a", (centre, -3), value_font.clone());
                chart.draw_series(std::iter::once(label))?;
            }
            for &r in &runs[i][j] {
                let dot = EmptyElement::at((SegmentValue::Exact(i), r))
                    + Circle::new((centre, 0), 3, BLACK.mix(0.75).filled());
                chart.draw_series(std::iter::once(dot))?;
            }
        }
    }
    Ok(())
}

/// The records of one server in one scenario.
fn records_of<'a>(
    report: &'a Report,
    scenario: &'a str,
    server: &'a str,
    stat: Stat,
) -> impl Iterator<Item = &'a Record> + 'a {
    report
        .records
        .iter()
        .filter(move |r| r.scenario == scenario && r.server == server && r.stat == stat)
}

/// The x extent of sub-bar `j` of `k` (one or two) in server slot `i`, with
/// the pixel margins that leave `gap` pixels on each side of the server's
/// bars.
fn bar_span(
    i: usize,
    j: usize,
    k: usize,
    gap: u32,
) -> (SegmentValue<usize>, SegmentValue<usize>, u32, u32) {
    use SegmentValue::{CenterOf, Exact};
    match (k, j) {
        (2, 0) => (Exact(i), CenterOf(i), gap, 0),
        (2, _) => (CenterOf(i), Exact(i + 1), 0, gap),
        _ => (Exact(i), Exact(i + 1), gap, gap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two scenarios, three servers; one server lacks p50, one figure is
    /// null, one server has single runs.
    const FIXTURE: &str = r#"{
        "benchmark": "fixture",
        "title": "Fixture benchmark",
        "source": "unit test",
        "date": "2026-12-02",
        "cores": 2,
        "server_threads": 1,
        "rounds": 2,
        "secs": 1,
        "scenario_label": "pipeline depth",
        "server_label": "server",
        "throughput_unit": "requests/s",
        "cpu_unit": "µs/request",
        "baseline": "gamma",
        "records": [
            {"scenario": "depth 1", "server": "alpha", "stat": "median", "throughput": 40622, "p50_us": 1161, "p99_us": 2913, "cpu_us": 20.84},
            {"scenario": "depth 1", "server": "alpha", "stat": "run", "round": 1, "throughput": 40000, "p50_us": 1100, "p99_us": 2900, "cpu_us": 20.0},
            {"scenario": "depth 1", "server": "alpha", "stat": "run", "round": 2, "throughput": 41244, "p50_us": 1222, "p99_us": 2926, "cpu_us": 21.68},
            {"scenario": "depth 1", "server": "beta_net", "stat": "median", "throughput": 30000, "p99_us": 3000, "cpu_us": null},
            {"scenario": "depth 1", "server": "gamma", "stat": "median", "throughput": 50000, "p50_us": 900, "p99_us": 25000, "cpu_us": 18.5},
            {"scenario": "depth 16", "server": "alpha", "stat": "median", "throughput": 238858, "p50_us": 3381, "p99_us": 6883, "cpu_us": 3.46},
            {"scenario": "depth 16", "server": "beta_net", "stat": "median", "throughput": 81435, "p99_us": 24047, "cpu_us": 12.02},
            {"scenario": "depth 16", "server": "gamma", "stat": "median", "throughput": 100000, "p50_us": 5000, "p99_us": 9000, "cpu_us": 5.5}
        ]
    }"#;

    /// The text elements of an SVG, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bench_report-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn charts_name_every_server_and_scenario() {
        let dir = scratch("charts");
        let report = parse(FIXTURE).expect("fixture parses");
        let written = render(&report, &dir).expect("charts render");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "fixture-throughput.svg",
                "fixture-cpu.svg",
                "fixture-latency.svg"
            ]
        );
        for path in &written {
            let svg = fs::read_to_string(path).expect("chart written");
            assert!(svg.starts_with("<svg"), "{}: not an SVG", path.display());
            for needle in [
                "alpha",
                "beta_net",
                "gamma",
                "pipeline depth: depth 1",
                "pipeline depth: depth 16",
                "Fixture benchmark",
                "2026-12-02",
            ] {
                assert!(svg.contains(needle), "{} lacks {needle:?}", path.display());
            }
            // One filled bar per present median: the fixture's nulls leave
            // gaps, which are labelled n/a instead of drawn as zero.
            assert!(svg.contains("<rect"), "{}: no bars", path.display());
        }
        let throughput = fs::read_to_string(&written[0]).unwrap();
        let labels = texts(&throughput);
        for label in ["40.6k", "239k", "81.4k", "100k", "30k", "50k"] {
            assert!(
                labels.iter().any(|l| l == label),
                "throughput lacks {label}"
            );
        }
        assert_eq!(throughput.matches("<circle").count(), 2, "one dot per run");
        let cpu = fs::read_to_string(&written[1]).unwrap();
        assert_eq!(
            texts(&cpu).iter().filter(|l| *l == "n/a").count(),
            1,
            "the one null figure is marked n/a"
        );
        assert!(cpu.contains("server CPU µs/request"));
        let latency = fs::read_to_string(&written[2]).unwrap();
        // The longest latency is 25 ms, so the axis is in milliseconds.
        assert!(latency.contains("latency (ms)"));
        assert!(latency.contains("solid: p50, light: p99"));
        let labels = texts(&latency);
        for label in ["1.16", "2.91", "25", "24", "3.38", "6.88"] {
            assert!(labels.iter().any(|l| l == label), "latency lacks {label}");
        }
        // beta_net has no p50 in either scenario.
        assert_eq!(labels.iter().filter(|l| *l == "n/a").count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_without_p50_says_so() {
        let text = FIXTURE.replace("\"p50_us\"", "\"p50_none\"");
        let report = parse(&text).expect("unknown fields are ignored");
        let dir = scratch("nop50");
        let written = render(&report, &dir).unwrap();
        let latency = fs::read_to_string(&written[2]).unwrap();
        assert!(latency.contains("p99 (p50 was not recorded)"));
        // No empty p50 slot per server: only the p99 bars and their labels.
        let labels = texts(&latency);
        assert!(!labels.iter().any(|l| l == "n/a"), "{labels:?}");
        for label in ["2.91", "3", "25", "6.88", "24", "9"] {
            assert!(labels.iter().any(|l| l == label), "latency lacks {label}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_server_one_scenario() {
        let text = r#"{"benchmark": "solo", "title": "Solo", "source": "unit test",
            "date": "2026-12-02", "scenario_label": "depth", "server_label": "proxy",
            "throughput_unit": "requests/s", "cpu_unit": "µs/request",
            "records": [{"scenario": "1", "server": "only", "stat": "median",
                         "throughput": 0, "p50_us": 0, "p99_us": 0, "cpu_us": 0}]}"#;
        let report = parse(text).unwrap();
        let dir = scratch("solo");
        let written = render(&report, &dir).unwrap();
        for path in &written {
            let labels = texts(&fs::read_to_string(path).unwrap());
            assert!(labels.iter().any(|l| l == "only"), "{}", path.display());
            assert!(labels.iter().any(|l| l == "depth: 1"), "{}", path.display());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for (text, why) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("[]", "expected struct Report"),
            (
                &FIXTURE.replace("\"fixture\"", "\"../up\""),
                "benchmark name",
            ),
            (&FIXTURE.replace("\"fixture\"", "\"\""), "benchmark name"),
            (&FIXTURE.replace("\"median\"", "\"run\""), "no median"),
            (
                &FIXTURE.replace("\"median\"", "\"mean\""),
                "unknown variant",
            ),
            (&FIXTURE.replace("40622", "-1"), "not a finite"),
            (&FIXTURE.replace("\"title\"", "\"titel\""), "missing field"),
        ] {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{why}: accepted"));
            assert!(err.to_string().contains(why), "{why}: got {err}");
        }
        let missing = Path::new("/nonexistent/bench.json");
        assert!(load(missing).is_err());
    }

    #[test]
    fn compact_labels() {
        let cases = [
            (1052656.0, "1.05M"),
            (1_000_000.0, "1M"),
            (238858.0, "239k"),
            (40622.0, "40.6k"),
            (1501.0, "1.5k"),
            (383.0, "383"),
            (23.73, "23.7"),
            (0.87, "0.87"),
            (3.0, "3"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(compact(v), want, "{v}");
        }
    }

    #[test]
    fn order_of_first_appearance() {
        assert_eq!(
            ordered(["b", "a", "b", "c", "a"].into_iter()),
            ["b", "a", "c"]
        );
    }
}
