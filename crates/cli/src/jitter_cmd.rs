//! `worknode cores jitter`: measure how quiet each CPU is, pinned and unpinned.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use worknode_cores::jitter::{self, CpuJitter, JitterConfig, JitterRun, Mode, Probe};
use worknode_cores::{CpuSet, Host, SysRoot};

use crate::CliError;

/// Arguments of `worknode cores jitter`.
#[derive(Debug, clap::Args)]
pub(crate) struct JitterArgs {
    /// spin (busy-loop gap detection) or timer (absolute-deadline wake-up latency).
    #[arg(long, default_value = "timer", value_name = "PROBE")]
    probe: String,
    /// CPUs to probe, one thread each (default: every CPU this process may use).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// How long each probe runs: 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_name = "TIME")]
    duration: String,
    /// Spin probe: gaps above this count as interruptions (default: 8× the loop floor).
    #[arg(long, value_name = "NS")]
    threshold_ns: Option<u64>,
    /// Timer probe: wake-up interval.
    #[arg(long, default_value_t = 1_000, value_name = "US")]
    interval_us: u64,
    /// Run the probe threads SCHED_FIFO at this priority (1-99).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=99))]
    priority: Option<u8>,
    /// Lock the process's memory (mlockall) before measuring.
    #[arg(long)]
    mlock: bool,
    /// Background spinning threads per probed CPU, to show contention.
    #[arg(long, default_value_t = 0, value_name = "N")]
    load: u32,
    /// Run pinned, then unpinned, back to back; one table with ratios.
    #[arg(long, conflicts_with = "unpinned")]
    compare: bool,
    /// Leave the probe threads unpinned.
    #[arg(long)]
    unpinned: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also plot the latency distributions (log axes) to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// Parses `10s`, `250ms`, `2m`, `1.5s`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ns) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e9)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e9)
    } else {
        (text, 1e9)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 10s, 500ms, 2m)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_nanos((value * unit_ns) as u64))
}

#[derive(Serialize)]
struct JitterJson<'a> {
    runs: &'a [JitterRun],
}

pub(crate) fn run(args: &JitterArgs, out: &mut impl Write) -> Result<(), CliError> {
    let probe: Probe =
        args.probe.parse().map_err(|e: String| CliError::input(format!("--probe: {e}")))?;
    let duration =
        parse_duration(&args.duration).map_err(|e| CliError::input(format!("--duration: {e}")))?;
    let sys = SysRoot::new("/");
    let host = Host::discover(&sys);
    let cpus = match &args.cpus {
        Some(list) => {
            let cpus: CpuSet =
                list.parse().map_err(|e| CliError::input(format!("--cpus {list:?}: {e}")))?;
            if cpus.is_empty() {
                return Err(CliError::input("--cpus is empty"));
            }
            cpus
        }
        None => host.usable(),
    };
    let config = JitterConfig {
        probe,
        cpus,
        duration,
        threshold_ns: args.threshold_ns,
        interval_us: args.interval_us,
        fifo_priority: args.priority,
        mlock: args.mlock,
        load_threads: args.load,
    };
    let modes: &[Mode] = if args.compare {
        &[Mode::Pinned, Mode::Unpinned]
    } else if args.unpinned {
        &[Mode::Unpinned]
    } else {
        &[Mode::Pinned]
    };
    let mut runs = Vec::new();
    for &mode in modes {
        let run = jitter::run(&host, &config, mode)
            .map_err(|error| CliError::input(error.to_string()))?;
        runs.push(run);
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, plot(&runs)).map_err(|error| {
            CliError::input(format!("cannot write --svg {}: {error}", path.display()))
        })?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &JitterJson { runs: &runs })
            .map_err(CliError::output)?;
        writeln!(out)?;
        return Ok(());
    }
    write!(out, "{}", report(&runs, &config))?;
    Ok(())
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// The tables, and the pinned/unpinned ratios when both ran.
fn report(runs: &[JitterRun], config: &JitterConfig) -> String {
    let mut text = String::new();
    let Some(first) = runs.first() else {
        return text;
    };
    let _ = writeln!(
        text,
        "kernel {}, {}, steal {} during the run",
        first.kernel.as_deref().unwrap_or("unknown"),
        match first.virtualized {
            Some(true) =>
                "virtual machine (numbers include hypervisor noise: compare ratios, not absolutes)",
            Some(false) => "bare metal",
            None => "virtualization unknown",
        },
        runs.iter()
            .map(|r| r.steal_pct.map(|s| format!("{s:.3}%")).unwrap_or_else(|| "unknown".into()))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let _ = writeln!(
        text,
        "{} probe, {:.1} s per CPU{}{}{}{}{}",
        match config.probe {
            Probe::Spin => "spin".to_string(),
            Probe::Timer => format!("timer ({} µs interval)", config.interval_us),
        },
        first.duration_s,
        config.fifo_priority.map(|p| format!(", SCHED_FIFO {p}")).unwrap_or_default(),
        if config.mlock { ", mlock" } else { "" },
        if first.dma_latency_held { ", cpu_dma_latency 0 µs" } else { "" },
        if config.load_threads > 0 {
            format!(", {} load thread(s) per CPU", config.load_threads)
        } else {
            String::new()
        },
        if config.probe == Probe::Spin {
            format!(", bare clock read {} ns", first.bare_clock_floor_ns)
        } else {
            String::new()
        },
    );
    if !first.dma_latency_held {
        let _ = writeln!(text, "note: could not hold /dev/cpu_dma_latency at 0 (needs root): deep idle states add wake-up latency");
    }
    match config.probe {
        Probe::Timer => {
            let _ = writeln!(
                text,
                "{:>4} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
                "cpu", "mode", "wake-ups", "min µs", "avg µs", "p99 µs", "p99.9 µs", "max µs"
            );
            for r in runs.iter().flat_map(|run| &run.results) {
                let _ = writeln!(
                    text,
                    "{:>4} {:>9} {:>10} {:>9} {:>9.1} {:>9} {:>10} {:>10}",
                    r.cpu,
                    r.mode.to_string(),
                    r.samples,
                    us(r.min_ns),
                    r.avg_ns / 1e3,
                    us(r.p99_ns),
                    us(r.p999_ns),
                    us(r.max_ns)
                );
            }
        }
        Probe::Spin => {
            let _ = writeln!(
                text,
                "{:>4} {:>9} {:>8} {:>10} {:>10} {:>7} {:>8} {:>8} {:>9} {:>10} {:>9}",
                "cpu",
                "mode",
                "floor ns",
                "thresh ns",
                "interr/s",
                "lost %",
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "p99.99 µs",
                "max µs"
            );
            for r in runs.iter().flat_map(|run| &run.results) {
                let _ = writeln!(
                    text,
                    "{:>4} {:>9} {:>8} {:>10} {:>10.1} {:>7.3} {:>8} {:>8} {:>9} {:>10} {:>9}",
                    r.cpu,
                    r.mode.to_string(),
                    r.loop_floor_ns.unwrap_or(0),
                    r.threshold_ns.unwrap_or(0),
                    r.interruptions_per_s,
                    r.cpu_lost_pct,
                    us(r.p50_ns),
                    us(r.p99_ns),
                    us(r.p999_ns),
                    us(r.p9999_ns),
                    us(r.max_ns)
                );
            }
        }
    }
    if let [pinned, unpinned] = runs {
        let _ = writeln!(text, "unpinned ÷ pinned (above 1: pinning helps):");
        for (p, u) in pinned.results.iter().zip(&unpinned.results) {
            let ratio =
                |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "-".into() };
            let _ = match config.probe {
                Probe::Timer => writeln!(
                    text,
                    "  cpu {}: avg {}, p99 {}, p99.9 {}, max {}",
                    p.cpu,
                    ratio(u.avg_ns, p.avg_ns),
                    ratio(u.p99_ns as f64, p.p99_ns as f64),
                    ratio(u.p999_ns as f64, p.p999_ns as f64),
                    ratio(u.max_ns as f64, p.max_ns as f64)
                ),
                Probe::Spin => writeln!(
                    text,
                    "  cpu {}: interruptions/s {}, CPU lost {}, p99 {}, max {}",
                    p.cpu,
                    ratio(u.interruptions_per_s, p.interruptions_per_s),
                    ratio(u.cpu_lost_pct, p.cpu_lost_pct),
                    ratio(u.p99_ns as f64, p.p99_ns as f64),
                    ratio(u.max_ns as f64, p.max_ns as f64)
                ),
            };
        }
    }
    for warning in runs.iter().flat_map(|run| &run.results).flat_map(|r| &r.warnings) {
        let _ = writeln!(text, "warning: {warning}");
    }
    text
}

/// Tail plot: fraction of samples above each latency, both axes logarithmic.
fn plot(runs: &[JitterRun]) -> String {
    const WIDTH: f64 = 1000.0;
    const HEIGHT: f64 = 520.0;
    const LEFT: f64 = 80.0;
    const TOP: f64 = 50.0;
    const PLOT_W: f64 = 600.0;
    const PLOT_H: f64 = 400.0;
    let series: Vec<&CpuJitter> = runs.iter().flat_map(|run| &run.results).collect();
    let points = series.iter().flat_map(|s| s.tail.iter());
    let x_min = points.clone().map(|p| p.0).min().unwrap_or(1).max(1) as f64;
    let x_max = points.clone().map(|p| p.0).max().unwrap_or(10).max(10) as f64;
    let y_min = points.map(|p| p.1).filter(|&y| y > 0.0).fold(1.0, f64::min).max(1e-9);
    let (lx0, lx1) = (x_min.log10().floor(), x_max.log10().ceil().max(x_min.log10().floor() + 1.0));
    let (ly0, ly1) = (y_min.log10().floor(), 0.0);
    let x = |v: f64| LEFT + (v.max(1.0).log10() - lx0) / (lx1 - lx0) * PLOT_W;
    let y = |f: f64| TOP + (ly1 - f.max(y_min).log10()) / (ly1 - ly0).max(1.0) * PLOT_H;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let probe = runs
        .first()
        .map(|r| match r.probe {
            Probe::Spin => "spin probe: interruption gaps",
            Probe::Timer => "timer probe: wake-up latency",
        })
        .unwrap_or("");
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">Jitter — {probe} (fraction of samples above each latency)</text>"#
    );
    for decade in lx0 as i32..=lx1 as i32 {
        let value = 10f64.powi(decade);
        let px = x(value);
        let label =
            if value >= 1e3 { format!("{} µs", value / 1e3) } else { format!("{value} ns") };
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 16.0
        );
    }
    for decade in ly0 as i32..=0 {
        let py = y(10f64.powi(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">1e{decade}</text>"##,
            LEFT + PLOT_W,
            LEFT - 6.0,
            py + 4.0
        );
    }
    for (index, s) in series.iter().enumerate() {
        let colour = format!("hsl({:.0},65%,42%)", (index as f64 * 137.508) % 360.0);
        let dash = if s.mode == Mode::Unpinned { r#" stroke-dasharray="6 3""# } else { "" };
        let path: Vec<String> =
            s.tail.iter().map(|&(v, f)| format!("{:.1},{:.1}", x(v as f64), y(f))).collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = TOP + 10.0 + index as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{:.1}">cpu {} {} (max {} µs)</text>"#,
            LEFT + PLOT_W + 20.0,
            LEFT + PLOT_W + 44.0,
            LEFT + PLOT_W + 50.0,
            ly + 4.0,
            s.cpu,
            s.mode,
            us(s.max_ns)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#999"/></svg>"##
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0").is_err());
    }
}
