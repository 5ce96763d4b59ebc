use super::table::draw;
use super::*;
use serde_json::json;
use std::time::Instant;

#[test]
fn the_view_counts_parts_alarms_and_restarts() {
    let mut v = View::new(&["a:1".to_string()]);
    let t = Instant::now();
    let ev = |value: Value| Update::Event {
        source: "a:1".into(),
        raw: value.to_string(),
        value,
    };
    v.apply(
        &Update::Connected {
            source: "a:1".into(),
            run: "r1".into(),
        },
        t,
    );
    for i in 0..20 {
        v.apply(
            &ev(json!({"type": "part", "line": "l", "latency_ms": f64::from(i)})),
            t,
        );
    }
    v.apply(
        &ev(json!({"type": "alarm", "code": "overload", "message": "m", "active": true})),
        t,
    );
    v.apply(
        &ev(json!({"type": "heartbeat", "ready": true, "counters": {"triggers": 20}})),
        t,
    );
    let l = &v.lines[0];
    assert_eq!((l.parts_per_s(), l.latency_p50()), (2.0, Some(10.0)));
    assert_eq!(
        l.drift_text(),
        "-",
        "no drift figures before the window is full"
    );
    assert_eq!(l.alarms.len(), 1);
    assert_eq!(l.counters["triggers"], 20);
    v.apply(
        &Update::Notice {
            source: "a:1".into(),
            value: json!({"type": "restarted", "run": "r2"}),
        },
        t,
    );
    let l = &v.lines[0];
    assert_eq!((l.restarts, l.run.as_str(), l.alarms.len()), (1, "r2", 0));
    assert!(v.log.iter().any(|m| m.contains("restarted")));
}

#[test]
fn the_table_shows_each_line_its_state_and_counts() {
    let mut v = View::new(&["a:1".to_string(), "b:2".to_string()]);
    let t = Instant::now();
    v.apply(
        &Update::Connected {
            source: "a:1".into(),
            run: "r1".into(),
        },
        t,
    );
    let hb = json!({"type": "heartbeat", "line": "belt", "ready": true,
                    "counters": {"triggers": 42, "passes": 40, "rejects": 1, "fault_rejects": 1},
                    "drift": {"window": 40, "median": 0.61, "shift_std": 2.24, "reject_rate": 0.3}});
    v.apply(
        &Update::Event {
            source: "a:1".into(),
            raw: hb.to_string(),
            value: hb,
        },
        t,
    );
    let backend = ratatui::backend::TestBackend::new(160, 12);
    let mut term = ratatui::Terminal::new(backend).unwrap();
    term.draw(|f| draw(f, &v)).unwrap();
    let text: String = term
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    for want in [
        "belt (a:1)",
        "ready",
        "42",
        "40",
        "b:2",
        "DOWN",
        "connected, run r1",
        "+2.24 std",
    ] {
        assert!(text.contains(want), "{want} missing from the table");
    }
}

#[test]
fn the_drift_column_follows_the_last_heartbeat() {
    let mut v = View::new(&["a:1".to_string()]);
    let t = Instant::now();
    let beat = |v: &mut View, drift: Value| {
        let value = json!({"type": "heartbeat", "ready": true, "counters": {}, "drift": drift});
        v.apply(
            &Update::Event {
                source: "a:1".into(),
                raw: value.to_string(),
                value,
            },
            t,
        );
        v.lines[0].drift_text()
    };
    let d = json!({"window": 200, "median": 0.3, "shift_std": -0.61, "reject_rate": 0.01});
    assert_eq!(beat(&mut v, d), "-0.61 std");
    // A tiled line has no calibration to compare with: its reject rate instead.
    let d = json!({"window": 200, "median": 0.3, "shift_std": null, "reject_rate": 0.125});
    assert_eq!(beat(&mut v, d), "12.5 % rej");
    assert_eq!(beat(&mut v, Value::Null), "-");
}
