//! `demo --svg`: the run as a timeline. Three panels over the same time axis: the
//! scheduled and the actual leader of every turn (one colour per member), the handoff
//! duration of each turn, and the write latency (p50 and p99 per slice, log scale), with
//! the demo's faults marked across all three.

use std::fmt::Write as _;

use super::{Fault, LatencyPoint, TurnRow};
use crate::svg::{colour, escape};

const WIDTH_PX: f64 = 1_000.0;
const LEFT_PX: f64 = 110.0;
const RIGHT_PX: f64 = 20.0;
const STRIP_PX: f64 = 22.0;
const HANDOFF_TOP_PX: f64 = 150.0;
const HANDOFF_PX: f64 = 90.0;
const LATENCY_TOP_PX: f64 = 290.0;
const LATENCY_PX: f64 = 200.0;
const HEIGHT_PX: f64 = 556.0;
/// Latency axis bounds (ms), log scale.
const LATENCY_MIN_MS: f64 = 0.1;
const LATENCY_MAX_MS: f64 = 10_000.0;

/// Renders the timeline as an SVG document.
pub(crate) fn timeline(
    rows: &[TurnRow],
    latency: &[LatencyPoint],
    faults: &[Fault],
    names: &[String],
    duration_s: f64,
) -> String {
    let span = WIDTH_PX - LEFT_PX - RIGHT_PX;
    let x = |seconds: f64| LEFT_PX + span * (seconds / duration_s).clamp(0.0, 1.0);
    let member_colour = |id: u64| if id == 0 { "#bbb".to_owned() } else { colour(id as usize - 1) };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let on_schedule = rows.iter().filter(|r| r.actual == Some(r.scheduled)).count();
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">worknode demo: {} turns, {} led by the scheduled member; {:.0} s of load</text>"#,
        rows.len(),
        on_schedule,
        duration_s
    );
    // Legend.
    for (index, name) in names.iter().enumerate() {
        let lx = LEFT_PX + index as f64 * 90.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="34" width="12" height="12" fill="{}"/><text x="{}" y="45">{}</text>"#,
            colour(index),
            lx + 16.0,
            escape(name)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="34" width="12" height="12" fill="#bbb"/><text x="{}" y="45">no record</text>"##,
        LEFT_PX + names.len() as f64 * 90.0,
        LEFT_PX + names.len() as f64 * 90.0 + 16.0
    );
    // Leader strips.
    for (label, y, actual) in
        [("scheduled", 64.0, false), ("actual leader", 64.0 + STRIP_PX + 8.0, true)]
    {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            LEFT_PX - 8.0,
            y + 15.0
        );
        for row in rows {
            let id = if actual { row.actual.unwrap_or(0) } else { row.scheduled };
            let (x0, x1) = (x(row.start_s), x(row.end_s));
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{y}" width="{:.1}" height="{STRIP_PX}" fill="{}" stroke="white" stroke-width="0.5"><title>turn {} (slot {}): {}</title></rect>"#,
                (x1 - x0).max(0.5),
                member_colour(id),
                row.number,
                row.first_slot,
                escape(&if actual && !row.skipped.is_empty() {
                    row.skipped.clone()
                } else {
                    format!("n{id}")
                })
            );
        }
    }
    // Handoff durations.
    let handoff_max = rows.iter().filter_map(|r| r.handoff_ms).fold(1.0f64, f64::max);
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end">handoff ms</text><text x="{}" y="{}" text-anchor="end" fill="#666">{handoff_max:.1}</text>"##,
        LEFT_PX - 8.0,
        HANDOFF_TOP_PX + HANDOFF_PX / 2.0,
        LEFT_PX - 8.0,
        HANDOFF_TOP_PX + 10.0
    );
    axis_box(&mut svg, HANDOFF_TOP_PX, HANDOFF_PX);
    for row in rows {
        let Some(ms) = row.handoff_ms else { continue };
        let height = HANDOFF_PX * ms / handoff_max;
        let (x0, x1) = (x(row.start_s), x(row.end_s));
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{}"><title>turn {}: {ms:.1} ms</title></rect>"#,
            x0 - (x1 - x0) * 0.15,
            HANDOFF_TOP_PX + HANDOFF_PX - height,
            ((x1 - x0) * 0.3).max(1.0),
            member_colour(row.actual.unwrap_or(0)),
            row.number
        );
    }
    // Write latency, log scale.
    let y = |ms: f64| {
        let clamped = ms.clamp(LATENCY_MIN_MS, LATENCY_MAX_MS);
        let share = (clamped / LATENCY_MIN_MS).log10() / (LATENCY_MAX_MS / LATENCY_MIN_MS).log10();
        LATENCY_TOP_PX + LATENCY_PX * (1.0 - share)
    };
    axis_box(&mut svg, LATENCY_TOP_PX, LATENCY_PX);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">write latency</text>"#,
        LEFT_PX - 8.0,
        LATENCY_TOP_PX - 6.0
    );
    let mut tick = LATENCY_MIN_MS;
    while tick <= LATENCY_MAX_MS {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT_PX}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#666">{} ms</text>"##,
            WIDTH_PX - RIGHT_PX,
            y(tick),
            y(tick),
            LEFT_PX - 8.0,
            y(tick) + 4.0,
            tick
        );
        tick *= 10.0;
    }
    for (label, pick, stroke) in [("p50", 0, "#2b7bba"), ("p99", 1, "#d9480f")] {
        let points: Vec<String> = latency
            .iter()
            .map(|p| {
                format!("{:.1},{:.1}", x(p.at_s), y(if pick == 0 { p.p50_ms } else { p.p99_ms }))
            })
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{stroke}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        let lx = WIDTH_PX - RIGHT_PX - 120.0 + pick as f64 * 60.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{stroke}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"#,
            lx + 16.0,
            LATENCY_TOP_PX - 10.0,
            LATENCY_TOP_PX - 10.0,
            lx + 20.0,
            LATENCY_TOP_PX - 6.0
        );
    }
    // Time axis.
    let axis_y = LATENCY_TOP_PX + LATENCY_PX + 18.0;
    let step = (duration_s / 10.0).ceil().max(1.0);
    let mut second = 0.0;
    while second <= duration_s + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{axis_y}" text-anchor="middle" fill="#666">{second:.0} s</text>"##,
            x(second)
        );
        second += step;
    }
    // Faults across all panels.
    for (index, fault) in faults.iter().enumerate() {
        let fx = x(fault.at_s);
        // Alternate label rows so neighbouring faults do not overwrite each other.
        let label_y = axis_y + 18.0 + 14.0 * (index % 2) as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{fx:.1}" x2="{fx:.1}" y1="60" y2="{}" stroke="black" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="11">{}</text>"#,
            LATENCY_TOP_PX + LATENCY_PX,
            fx + 3.0,
            label_y,
            escape(&fault.what)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn axis_box(svg: &mut String, top: f64, height: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT_PX}" y="{top}" width="{}" height="{height}" fill="none" stroke="#ccc"/>"##,
        WIDTH_PX - LEFT_PX - RIGHT_PX
    );
}
