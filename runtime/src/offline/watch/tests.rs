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
                    "counters": {"triggers": 42, "passes": 40, "rejects": 1, "fault_rejects": 1}});
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
    ] {
        assert!(text.contains(want), "{want} missing from the table");
    }
}
