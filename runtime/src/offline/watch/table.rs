//! The two outputs of `diffad watch`: JSON lines (`--json`) and the terminal table.

use crossbeam_channel::Receiver;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{LineView, Update, View};

/// `--json`: every event and notice, merged, one JSON line each, until the followers stop.
pub fn run_json(
    rx: &Receiver<Update>,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let Ok(u) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        match u {
            Update::Event { raw, .. } => writeln!(out, "{raw}")?,
            Update::Notice { value, .. } => writeln!(out, "{value}")?,
            Update::Connected { source, run } => writeln!(
                out,
                "{}",
                json!({"type": "watch_connected", "source": source, "run": run})
            )?,
            Update::Disconnected { source, reason } => writeln!(
                out,
                "{}",
                json!({"type": "watch_disconnected", "source": source, "reason": reason})
            )?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The terminal table, redrawn four times a second; `q` or Esc quits.
pub fn run_tui(
    rx: &Receiver<Update>,
    sources: &[String],
    stop: &AtomicBool,
) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyModifiers};
    let mut terminal = ratatui::init();
    let mut view = View::new(sources);
    let result = (|| -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let end = Instant::now() + Duration::from_millis(250);
            while let Ok(u) = rx.recv_deadline(end) {
                view.apply(&u, Instant::now());
            }
            terminal.draw(|f| draw(f, &view))?;
            while event::poll(Duration::ZERO)? {
                if let TermEvent::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

/// The table of lines above, the notices below.
pub(super) fn draw(f: &mut ratatui::Frame, view: &View) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, List, ListItem, Row, Table};
    let [top, bottom] = Layout::vertical([
        Constraint::Length(view.lines.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    let now = Instant::now();
    let rows = view.lines.iter().map(|l| line_row(l, now));
    let header = Row::new(vec![
        "line",
        "state",
        "parts/s",
        "parts",
        "passes",
        "rejects",
        "fail-safe",
        "alarms",
        "drift",
        "latency",
        "heartbeat",
        "restart/lost",
        "run",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, column_widths()).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" diffad watch (q quits) "),
    );
    f.render_widget(table, top);
    let items: Vec<ListItem> = view
        .log
        .iter()
        .rev()
        .take(bottom.height.saturating_sub(2) as usize)
        .map(|t| ListItem::new(t.as_str()))
        .collect();
    f.render_widget(
        List::new(items).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" notices, newest first "),
        ),
        bottom,
    );
}

/// One line's row, coloured by its state.
fn line_row(l: &LineView, now: Instant) -> ratatui::widgets::Row<'static> {
    use ratatui::style::{Color, Style};
    use ratatui::widgets::Row;
    let n = |c: &Value, k: &str| c[k].as_u64().map_or("-".to_string(), |v| v.to_string());
    let state = match (l.connected, l.ready) {
        (false, _) => ("DOWN", Color::Red),
        (true, Some(true)) => ("ready", Color::Green),
        (true, Some(false)) => ("NOT READY", Color::Yellow),
        (true, None) => ("connected", Color::Gray),
    };
    let hb = l.last_heartbeat.map_or("-".into(), |t| {
        format!("{:.1} s ago", now.duration_since(t).as_secs_f64())
    });
    let alarms = if l.alarms.is_empty() {
        "-".to_string()
    } else {
        l.alarms.keys().cloned().collect::<Vec<_>>().join(",")
    };
    Row::new(vec![
        if l.line.is_empty() {
            l.source.clone()
        } else {
            format!("{} ({})", l.line, l.source)
        },
        state.0.to_string(),
        format!("{:.1}", l.parts_per_s()),
        n(&l.counters, "triggers"),
        n(&l.counters, "passes"),
        n(&l.counters, "rejects"),
        n(&l.counters, "fault_rejects"),
        alarms,
        l.drift_text(),
        l.latency_p50().map_or("-".into(), |v| format!("{v:.1} ms")),
        hb,
        format!("{}/{}", l.restarts, l.lost),
        l.run.clone(),
    ])
    .style(Style::default().fg(state.1))
}

/// The table's columns, in the header's order.
fn column_widths() -> [ratatui::layout::Constraint; 13] {
    use ratatui::layout::Constraint;
    [
        Constraint::Min(18),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Min(22),
    ]
}
