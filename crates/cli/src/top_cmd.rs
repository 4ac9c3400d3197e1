//! `worknode cores top`: a live view of every core (split by kind of time) and every
//! worknode thread, with telemetry alerts. `q` quits. `--once` prints one frame as text.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::crossterm::ExecutableCommand;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::{DefaultTerminal, Terminal};
use worknode_cores::telemetry::{AlertThresholds, CoreUsage, Telemetry, ThreadUsage};

use crate::CliError;

/// Arguments of `worknode cores top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Sampling interval in milliseconds.
    #[arg(long, default_value_t = 1_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(50..=60_000))]
    interval_ms: u64,
    /// Show the threads of this process (default: this command's own).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Print one frame as plain text after one interval and exit (no terminal needed).
    #[arg(long)]
    once: bool,
}

/// A piece of a frame line: text and the kind of thing it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tone {
    Plain,
    Dim,
    Title,
    User,
    System,
    Irq,
    SoftIrq,
    Steal,
    Alert,
}

pub(crate) type FrameLine = Vec<(String, Tone)>;

fn style(tone: Tone) -> Style {
    match tone {
        Tone::Plain => Style::default(),
        Tone::Dim => Style::default().fg(Color::DarkGray),
        Tone::Title => Style::default().fg(Color::Cyan),
        Tone::User => Style::default().bg(Color::Green).fg(Color::Black),
        Tone::System => Style::default().bg(Color::Red).fg(Color::Black),
        Tone::Irq => Style::default().bg(Color::Yellow).fg(Color::Black),
        Tone::SoftIrq => Style::default().bg(Color::Magenta).fg(Color::Black),
        Tone::Steal => Style::default().bg(Color::Blue).fg(Color::Black),
        Tone::Alert => Style::default().fg(Color::Red),
    }
}

/// The bar of one CPU, `width` cells: one letter per kind so it reads without colour.
pub(crate) fn bar(usage: &CoreUsage, width: usize) -> FrameLine {
    let mut line = Vec::new();
    let mut used = 0usize;
    for (pct, letter, tone) in [
        (usage.user, "u", Tone::User),
        (usage.system, "s", Tone::System),
        (usage.irq, "i", Tone::Irq),
        (usage.softirq, "q", Tone::SoftIrq),
        (usage.steal, "t", Tone::Steal),
    ] {
        let cells = ((pct / 100.0) * width as f64).round() as usize;
        let cells = cells.min(width - used);
        if cells > 0 {
            line.push((letter.repeat(cells), tone));
            used += cells;
        }
    }
    line.push((" ".repeat(width - used), Tone::Plain));
    line
}

/// Builds one frame for a terminal of `width` × `height`.
fn frame(telemetry: &Telemetry, pid_label: &str, width: u16, height: u16) -> Vec<FrameLine> {
    let width = usize::from(width.max(40));
    let height = usize::from(height.max(10));
    let mut cores = telemetry.core_usage();
    let threads = telemetry.thread_usage();
    let alerts: Vec<String> = telemetry.alerts().map(ToString::to_string).collect();
    let mut lines: Vec<FrameLine> = vec![vec![
        (format!("worknode cores top — {pid_label}"), Tone::Title),
        ("  u usr s sys i irq q sirq t steal · q quits".into(), Tone::Dim),
    ]];
    // Rows left for cores once the thread table (header + rows) and alerts have room.
    let thread_rows = threads.len().min(height / 3).max(1);
    let alert_rows = alerts.len().min(2);
    let core_rows = height.saturating_sub(1 + 1 + thread_rows + alert_rows + 1).max(1);
    if cores.len() > core_rows {
        // Not all fit: the busiest first.
        cores.sort_by(|a, b| b.busy().total_cmp(&a.busy()));
        cores.truncate(core_rows);
        cores.sort_by_key(|c| c.cpu);
    }
    let bar_width = width.saturating_sub(16).max(10);
    for core in &cores {
        let mut line = vec![(format!("cpu{:<3} [", core.cpu), Tone::Plain)];
        line.extend(bar(core, bar_width));
        line.push((format!("] {:>4.0}%", core.busy()), Tone::Plain));
        lines.push(line);
    }
    lines.push(vec![(
        format!(
            "{:<16} {:>7} {:>4} {:>6} {:>8} {:>9}",
            "worknode", "tid", "cpu", "cpu%", "vol/s", "invol/s"
        ),
        Tone::Title,
    )]);
    let mut threads: Vec<&ThreadUsage> = threads.iter().collect();
    threads.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct));
    for thread in threads.iter().take(thread_rows) {
        lines.push(vec![(
            format!(
                "{:<16} {:>7} {:>4} {:>6.1} {:>8.1} {:>9.1}",
                truncate(&thread.worknode, 16),
                thread.tid,
                thread.cpu.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                thread.cpu_pct,
                thread.voluntary_per_s,
                thread.involuntary_per_s
            ),
            Tone::Plain,
        )]);
    }
    for alert in alerts.iter().rev().take(alert_rows) {
        lines.push(vec![(format!("alert: {}", truncate(alert, width - 7)), Tone::Alert)]);
    }
    lines
}

pub(crate) fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

fn to_ratatui(lines: &[FrameLine]) -> Vec<Line<'static>> {
    lines
        .iter()
        .map(|line| {
            Line::from(
                line.iter()
                    .map(|(text, tone)| Span::styled(text.clone(), style(*tone)))
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

pub(crate) fn to_text(lines: &[FrameLine]) -> String {
    let mut text = String::new();
    for line in lines {
        for (piece, _) in line {
            text.push_str(piece);
        }
        text.push('\n');
    }
    text
}

fn telemetry_for(args: &TopArgs) -> Result<(Telemetry, String), CliError> {
    let thresholds = AlertThresholds::default();
    let (mut telemetry, label) = match args.pid {
        Some(pid) => {
            let root = PathBuf::from(format!("/proc/{pid}"));
            if !root.is_dir() {
                return Err(CliError::input(format!("--pid {pid}: no such process")));
            }
            (Telemetry::with_proc_root(root, thresholds), format!("pid {pid}"))
        }
        None => (Telemetry::new(thresholds), "this process".to_string()),
    };
    telemetry.watch_all_threads();
    Ok((telemetry, label))
}

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

pub(crate) fn run(args: &TopArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (mut telemetry, label) = telemetry_for(args)?;
    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    telemetry.sample(now_ns(start));
    if args.once || !std::io::stdout().is_terminal() {
        std::thread::sleep(interval);
        telemetry.sample(now_ns(start));
        write!(out, "{}", to_text(&frame(&telemetry, &label, 80, 24)))?;
        return Ok(());
    }
    let mut terminal = enter_terminal()?;
    let result = live(&mut terminal, &mut telemetry, &label, interval, start);
    leave_terminal();
    result
}

pub(crate) fn enter_terminal() -> Result<DefaultTerminal, CliError> {
    let fail = |error: std::io::Error| CliError::input(format!("cannot use the terminal: {error}"));
    terminal::enable_raw_mode().map_err(fail)?;
    std::io::stdout().execute(EnterAlternateScreen).map_err(fail)?;
    Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout())).map_err(fail)
}

pub(crate) fn leave_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
}

fn live(
    terminal: &mut DefaultTerminal,
    telemetry: &mut Telemetry,
    label: &str,
    interval: Duration,
    start: Instant,
) -> Result<(), CliError> {
    let telemetry = std::cell::RefCell::new(telemetry);
    live_loop(
        terminal,
        interval,
        |width, height| frame(&telemetry.borrow(), label, width, height),
        || {
            let mut telemetry = telemetry.borrow_mut();
            telemetry.watch_all_threads();
            telemetry.sample(now_ns(start));
        },
    )
}

/// Redraws `frame` until `q`, Esc or Ctrl-C, calling `refresh` every `interval`.
pub(crate) fn live_loop(
    terminal: &mut DefaultTerminal,
    interval: Duration,
    frame: impl Fn(u16, u16) -> Vec<FrameLine>,
    mut refresh: impl FnMut(),
) -> Result<(), CliError> {
    let mut next_refresh = Instant::now() + interval;
    loop {
        terminal
            .draw(|f| {
                let area: Rect = f.area();
                let lines = frame(area.width, area.height);
                f.render_widget(Paragraph::new(to_ratatui(&lines)), area);
            })
            .map_err(CliError::output)?;
        let timeout = next_refresh.saturating_duration_since(Instant::now());
        if event::poll(timeout).map_err(CliError::output)? {
            if let Event::Key(key) = event::read().map_err(CliError::output)? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= next_refresh {
            refresh();
            next_refresh += interval;
        }
    }
}
