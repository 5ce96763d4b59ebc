//! Bad `[camera]`, `[gpio]`, `[line]`, `[drift]`, `[supervisor]`, `[mqtt]`, `[archive]` values are refused
//! with the dotted key that is wrong.

use diffad::line::setup::LineSetup;

fn refused(toml: &str) -> String {
    match LineSetup::from_toml(toml) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => e.key,
    }
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "[camera]\nsource = \"v4l2\"\n[camera.v4l2]\nformat = \"rgb24\"",
            "camera.v4l2.format",
        ),
        ("[camera]\nsource = \"replay\"", "camera.replay.dir"),
        ("[camera.sim]\ndefect_rate = 1.5", "camera.sim.defect_rate"),
        ("[camera]\nstall_ms = 0", "camera.stall_ms"),
        ("[gpio]\npulse_ms = 0", "gpio.pulse_ms"),
        ("[gpio]\nsim = false", "gpio.reject"),
        ("[gpio.reject]\nname = \"\"", "gpio.reject.name"),
        ("[line]\nbelt_speed_mm_s = -1", "line.belt_speed_mm_s"),
        ("[line]\nname = \"a/b\"", "line.name"),
        ("[line]\nejector_ticks = 100", "line.ticks_per_mm"),
        ("[line]\nverdict_margin_ms = 600", "line.verdict_margin_ms"),
        ("[line]\ntrigger = \"gpio\"", "gpio.trigger"),
        ("[line]\nqueue = 0", "line.queue"),
        ("[drift]\nwindow = 5", "drift.window"),
        ("[drift]\nmax_shift_std = -1", "drift.max_shift_std"),
        ("[drift]\nmax_reject_rate = 5", "drift.max_reject_rate"),
        ("[drift]\nmedian = 1", "drift.median"),
        ("[supervisor]\nlisten = \"localhost\"", "supervisor.listen"),
        ("[supervisor]\nlog_level = \"loud\"", "supervisor.log_level"),
        ("[mqtt]\nurl = \"http://broker\"", "mqtt.url"),
        (
            "[mqtt]\nurl = \"mqtt://broker\"\nca_file = \"ca.pem\"",
            "mqtt.ca_file",
        ),
        ("[supervisor]\nmax_clients = 0", "supervisor.max_clients"),
        (
            "[supervisor]\nlisten = \"0.0.0.0:7878\"",
            "supervisor.expose",
        ),
        ("[supervisor.tls]\ncert_file = \"c.pem\"", "supervisor.tls"),
        ("[mqtt]\npassword = \"x\"", "mqtt.username"),
        ("[mqtt]\noutbox = 0", "mqtt.outbox"),
        ("[archive]\nmax_mb = 0", "archive.max_mb"),
        (
            "[gpio.reject]\nname = \"PAC.06\"\n[gpio.ready]\nname = \"PAC.06\"",
            "gpio.ready.name",
        ),
        (
            "[gpio.fault]\nname = \"PN.01\"\n[gpio.trigger]\nname = \"PN.01\"",
            "gpio.trigger.name",
        ),
    ];
    for (toml, key) in cases {
        assert_eq!(refused(toml), key, "for {toml:?}");
    }
}

#[test]
fn unknown_keys_and_enum_values_are_refused() {
    for toml in [
        "[line]\nbelt_speed = 3",
        "[camera]\nsource = \"usb\"",
        "[line]\nfail_safe = \"maybe\"",
        "[gpio.reject]\nname = \"PAC.06\"\nactive = \"sideways\"",
        "[unknown]\nx = 1",
    ] {
        let e = LineSetup::from_toml(toml)
            .err()
            .unwrap_or_else(|| panic!("accepted {toml:?}"));
        assert!(!e.message.is_empty(), "{toml:?}");
    }
}

#[test]
fn a_full_board_section_set_parses() {
    let s = LineSetup::from_toml(
        r#"
        [camera]
        source = "v4l2"
        [camera.v4l2]
        device = "/dev/video0"
        width = 1280
        height = 720
        format = "mjpeg"
        fps = 60
        [gpio]
        sim = false
        chip = "tegra234-gpio"
        pulse_ms = 30
        reject = { name = "PAC.06", active = "low" }
        ready = { name = "PQ.05" }
        heartbeat = { name = "PN.01" }
        fault = { name = "PCC.04" }
        trigger = { name = "PAA.01" }
        [line]
        name = "line7"
        trigger = "gpio"
        belt_speed_mm_s = 800
        ejector_ticks = 4000
        ticks_per_mm = 10
        fail_safe = "reject"
        threshold = 0.42
        [supervisor]
        listen = "0.0.0.0:7878"
        expose = true
        log_level = "info"
        [mqtt]
        url = "mqtt://10.0.0.2:1883"
        prefix = "plant/a"
        username = "line7"
        password_file = "/etc/diffad/mqtt.pw"
        [archive]
        dir = "/var/lib/diffad/rejects"
        max_mb = 2048
        "#,
    )
    .unwrap();
    assert_eq!(s.line.delay_ns(), 500_000_000);
    assert_eq!(
        s.gpio.reject.unwrap().active,
        diffad::gpio::ActiveLevel::Low
    );
}
