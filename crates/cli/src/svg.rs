//! `--svg`: an epoch's rotation drawn as colour strips, one row per member.
//!
//! Two panels. The first shows the opening turns one cell per turn, so a person sees the
//! rotation itself: who leads, in what order, how evenly spaced. The second covers the
//! whole epoch: each pixel column is a slice of the epoch and its opacity is the share of
//! turns the member led there relative to its stake share (half opacity = exactly its
//! share, full = twice or more), so a fair rotation reads as an even band and a lottery as
//! a speckle.

use std::fmt::Write;

use worknode_schedule::LeaderSchedule;

use crate::stakes_input::NamedStakes;

/// Members drawn on rows of their own; the rest share one "others" row.
const ROWS_MAX: usize = 24;
/// Turns shown cell by cell in the first panel.
const OPENING_TURNS_MAX: usize = 96;
const STRIP_WIDTH_PX: usize = 960;
const LABEL_WIDTH_PX: usize = 160;
const SHARE_WIDTH_PX: usize = 230;
const ROW_HEIGHT_PX: usize = 16;
const ROW_GAP_PX: usize = 3;
/// Opacity levels in the epoch panel; fewer levels merge more neighbouring slices.
const OPACITY_LEVELS: usize = 16;

/// One row of the drawing: which members it stands for.
struct Row {
    label: String,
    members: Vec<u32>,
    stake_share: f64,
}

/// Renders the schedule as an SVG document.
pub(crate) fn rotation_strip(schedule: &LeaderSchedule, named: &NamedStakes) -> String {
    let rows = rows(schedule, named);
    let mut row_of = vec![0usize; schedule.members().len()];
    for (index, row) in rows.iter().enumerate() {
        for &member in &row.members {
            row_of[member as usize] = index;
        }
    }
    let leader_rows: Vec<usize> =
        schedule.upcoming(0).map(|turn| row_of[turn.leader_index as usize]).collect();
    let panel_height_px = rows.len() * (ROW_HEIGHT_PX + ROW_GAP_PX);
    let opening_top_px = 78;
    let epoch_top_px = opening_top_px + panel_height_px + 58;
    let height_px = epoch_top_px + panel_height_px + 34;
    let width_px = LABEL_WIDTH_PX + STRIP_WIDTH_PX + SHARE_WIDTH_PX;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width_px}" height="{height_px}" viewBox="0 0 {width_px} {height_px}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Leader schedule: epoch {}, {} algorithm, {} turns of {} slots (slots {}–{})</text>"#,
        schedule.epoch(),
        schedule.params().algorithm,
        schedule.turn_count(),
        schedule.slots_per_turn(),
        schedule.first_slot(),
        schedule.last_slot()
    );
    let opening = leader_rows.len().min(OPENING_TURNS_MAX);
    heading(&mut svg, opening_top_px - 14, &format!("First {opening} turns, one cell per turn"));
    opening_panel(&mut svg, &rows, &leader_rows[..opening], opening_top_px);
    heading(
        &mut svg,
        epoch_top_px - 14,
        "Whole epoch: turns led per slice of the epoch, relative to stake (half tint = exactly its share)",
    );
    epoch_panel(&mut svg, &rows, &leader_rows, epoch_top_px);
    let axis_y = epoch_top_px + panel_height_px + 14;
    for quarter in 0..=4u64 {
        let x = LABEL_WIDTH_PX as f64 + STRIP_WIDTH_PX as f64 * quarter as f64 / 4.0;
        let slot = schedule.first_slot() + (schedule.slots_per_epoch() - 1) * quarter / 4;
        let _ = writeln!(
            svg,
            r##"<text x="{x:.1}" y="{axis_y}" text-anchor="middle" fill="#555">slot {slot}</text>"##
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn heading(svg: &mut String, y: usize, text: &str) {
    let _ = writeln!(svg, r##"<text x="10" y="{y}" fill="#333">{}</text>"##, escape(text));
}

/// Row labels and grey backgrounds.
fn row_frame(svg: &mut String, row: &Row, y: usize) {
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{LABEL_WIDTH_PX}" y="{y}" width="{STRIP_WIDTH_PX}" height="{ROW_HEIGHT_PX}" fill="#f2f2f2"/>"##,
        LABEL_WIDTH_PX - 8,
        y + 12,
        escape(&row.label)
    );
}

fn opening_panel(svg: &mut String, rows: &[Row], leader_rows: &[usize], top_px: usize) {
    let cell_px = STRIP_WIDTH_PX as f64 / OPENING_TURNS_MAX as f64;
    for (index, row) in rows.iter().enumerate() {
        let y = top_px + index * (ROW_HEIGHT_PX + ROW_GAP_PX);
        row_frame(svg, row, y);
        for (turn, _) in leader_rows.iter().enumerate().filter(|(_, &r)| r == index) {
            let _ = writeln!(
                svg,
                r#"<rect x="{:.2}" y="{y}" width="{:.2}" height="{ROW_HEIGHT_PX}" fill="{}"/>"#,
                LABEL_WIDTH_PX as f64 + turn as f64 * cell_px + 0.5,
                cell_px - 1.0,
                colour(index)
            );
        }
        let led = leader_rows.iter().filter(|&&r| r == index).count();
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{led} of {} turns</text>"#,
            LABEL_WIDTH_PX + STRIP_WIDTH_PX + 8,
            y + 12,
            leader_rows.len()
        );
    }
}

fn epoch_panel(svg: &mut String, rows: &[Row], leader_rows: &[usize], top_px: usize) {
    let turn_count = leader_rows.len();
    let turns_per_slice = turn_count.div_ceil(STRIP_WIDTH_PX).max(1);
    let slices = turn_count.div_ceil(turns_per_slice);
    let slice_px = STRIP_WIDTH_PX as f64 / slices as f64;
    for (index, row) in rows.iter().enumerate() {
        let y = top_px + index * (ROW_HEIGHT_PX + ROW_GAP_PX);
        row_frame(svg, row, y);
        let levels: Vec<usize> = (0..slices)
            .map(|slice| {
                let turns = &leader_rows
                    [slice * turns_per_slice..((slice + 1) * turns_per_slice).min(turn_count)];
                let led = turns.iter().filter(|&&r| r == index).count() as f64;
                let relative = led / turns.len() as f64 / row.stake_share.max(f64::MIN_POSITIVE);
                // 1.0 (exactly its share) maps to half the levels; twice or more saturates.
                (relative * OPACITY_LEVELS as f64 / 2.0).round().min(OPACITY_LEVELS as f64) as usize
            })
            .collect();
        let mut start = 0;
        while start < slices {
            let level = levels[start];
            let end = (start..slices).find(|&slice| levels[slice] != level).unwrap_or(slices);
            if level > 0 {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.2}" y="{y}" width="{:.2}" height="{ROW_HEIGHT_PX}" fill="{}" fill-opacity="{:.3}"/>"#,
                    LABEL_WIDTH_PX as f64 + start as f64 * slice_px,
                    (end - start) as f64 * slice_px,
                    colour(index),
                    level as f64 / OPACITY_LEVELS as f64
                );
            }
            start = end;
        }
        let led = leader_rows.iter().filter(|&&r| r == index).count();
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{:.2}% of turns, stake {:.2}%</text>"#,
            LABEL_WIDTH_PX + STRIP_WIDTH_PX + 8,
            y + 12,
            led as f64 * 100.0 / turn_count as f64,
            row.stake_share * 100.0
        );
    }
}

/// Rows by stake, largest first; past `ROWS_MAX` the smallest members share a row.
fn rows(schedule: &LeaderSchedule, named: &NamedStakes) -> Vec<Row> {
    let members = schedule.members();
    let total: f64 = members.iter().map(|member| member.stake as f64).sum();
    let mut order: Vec<u32> = (0..members.len() as u32).collect();
    order.sort_by(|&a, &b| {
        members[b as usize].stake.cmp(&members[a as usize].stake).then(a.cmp(&b))
    });
    let share =
        |list: &[u32]| list.iter().map(|&m| members[m as usize].stake as f64).sum::<f64>() / total;
    let own_rows = if order.len() > ROWS_MAX { ROWS_MAX - 1 } else { order.len() };
    let mut rows: Vec<Row> = order[..own_rows]
        .iter()
        .map(|&member| Row {
            label: named.name(member).to_owned(),
            members: vec![member],
            stake_share: share(&[member]),
        })
        .collect();
    if own_rows < order.len() {
        let rest = order[own_rows..].to_vec();
        rows.push(Row {
            label: format!("{} others", rest.len()),
            stake_share: share(&rest),
            members: rest,
        });
    }
    rows
}

/// Well-separated hues (golden angle), dark enough to read on white.
pub(crate) fn colour(index: usize) -> String {
    format!("hsl({:.0},65%,42%)", (index as f64 * 137.508) % 360.0)
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
