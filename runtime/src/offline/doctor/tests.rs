use super::*;
use crate::gpio::GpioConfig;
use crate::sinks::mqtt::MqttConfig;
use std::net::TcpListener;

fn fake_root() -> (tempfile::TempDir, Root) {
    let d = tempfile::tempdir().unwrap();
    let r = Root::new(d.path());
    (d, r)
}

fn touch(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn root_reroots_absolute_paths_only() {
    let r = Root::new("/tmp/x");
    assert_eq!(r.path("/dev/video0"), Path::new("/tmp/x/dev/video0"));
    assert_eq!(r.path("rel"), Path::new("rel"));
    assert!(Root::new("/").is_real());
    assert!(!r.is_real());
}

#[test]
fn chips_are_found_by_label_from_either_sysfs_place() {
    let (_d, r) = fake_root();
    assert!(gpio_chips(&r).is_empty());
    touch(&r.path("/dev/gpiochip0"), "");
    touch(&r.path("/dev/gpiochip1"), "");
    touch(
        &r.path("/sys/bus/gpio/devices/gpiochip0/label"),
        "tegra234-gpio\n",
    );
    touch(
        &r.path("/sys/class/gpio/gpiochip316/label"),
        "tegra234-gpio-aon\n",
    );
    std::fs::create_dir_all(r.path("/sys/class/gpio/gpiochip316/device/gpiochip1")).unwrap();
    let chips = gpio_chips(&r);
    assert_eq!(chips.len(), 2);
    assert_eq!(
        find_chip(&chips, "tegra234-gpio").unwrap().name,
        "gpiochip0"
    );
    assert_eq!(
        find_chip(&chips, "tegra234-gpio-aon").unwrap().name,
        "gpiochip1"
    );
    assert_eq!(find_chip(&chips, "gpiochip1").unwrap().name, "gpiochip1");
    assert!(find_chip(&chips, "pinctrl").is_none());
}

#[test]
fn gpio_check_names_what_is_missing() {
    let (_d, r) = fake_root();
    let mut cfg = GpioConfig {
        sim: false,
        chip: "tegra234-gpio".into(),
        ..GpioConfig::default()
    };
    let c = check_gpio(&cfg, &r);
    assert_eq!(c[0].status, Status::Fail);
    assert!(c[0].detail.contains("found: none"), "{}", c[0].detail);
    touch(&r.path("/dev/gpiochip0"), "");
    touch(
        &r.path("/sys/bus/gpio/devices/gpiochip0/label"),
        "tegra234-gpio",
    );
    let c = check_gpio(&cfg, &r);
    assert_eq!(c[0].status, Status::Pass, "{}", c[0]);
    cfg.sim = true;
    assert_eq!(check_gpio(&cfg, &r)[0].status, Status::Skip);
}

#[test]
fn unit_needs_a_watchdog() {
    assert_eq!(
        watchdog_sec("[Service]\nWatchdogSec=10\n").as_deref(),
        Some("10")
    );
    assert_eq!(watchdog_sec("[Service]\nWatchdogSec=0\n"), None);
    assert_eq!(watchdog_sec("[Service]\nType=notify\n"), None);
    let (_d, r) = fake_root();
    assert_eq!(check_unit(&r).status, Status::Fail);
    touch(
        &r.path("/etc/systemd/system/diffad.service"),
        "[Service]\nType=notify\n",
    );
    let c = check_unit(&r);
    assert!(c.status == Status::Fail && c.detail.contains("no WatchdogSec"));
    touch(
        &r.path("/etc/systemd/system/diffad.service"),
        "[Service]\nWatchdogSec=10s\n",
    );
    let c = check_unit(&r);
    assert!(
        c.status == Status::Fail && c.detail.contains("as root"),
        "{c:?}"
    );
    touch(
        &r.path("/etc/systemd/system/diffad.service"),
        "[Service]\nWatchdogSec=10s\nUser=diffad\n",
    );
    let c = check_unit(&r);
    assert!(
        c.status == Status::Pass && c.detail.contains("as user diffad"),
        "{c:?}"
    );
    assert_eq!(unit_user("[Service]\nUser=root\n").as_deref(), Some("root"));
}

#[test]
fn clock_flag_under_a_fake_root() {
    let (_d, r) = fake_root();
    assert_eq!(check_clock(&r).status, Status::Fail);
    touch(&r.path("/run/systemd/timesync/synchronized"), "");
    assert_eq!(check_clock(&r).status, Status::Pass);
}

#[test]
fn disk_and_dirs() {
    assert_eq!(disk_check(100.0, 64.0).status, Status::Pass);
    assert_eq!(disk_check(10.0, 64.0).status, Status::Fail);
    let d = tempfile::tempdir().unwrap();
    assert!(free_mb(d.path()).unwrap() > 0.0);
    assert_eq!(check_writable_dir("x", d.path(), "k").status, Status::Pass);
    let missing = d.path().join("nope/deeper");
    let c = check_writable_dir("x", &missing, "archive.dir");
    assert!(
        c.status == Status::Pass && c.detail.contains("created at start"),
        "{c}"
    );
    std::fs::write(d.path().join("file"), "").unwrap();
    let c = check_writable_dir("x", &d.path().join("file"), "archive.dir");
    assert!(c.status == Status::Fail && c.fix.unwrap().contains("archive.dir"));
}

#[test]
fn bind_and_connect() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    assert_eq!(check_bind(&addr).status, Status::Fail);
    assert_eq!(check_bind("127.0.0.1:0").status, Status::Pass);
    assert_eq!(check_bind("").status, Status::Skip);
    let mqtt = |url: String| MqttConfig {
        url,
        ..MqttConfig::default()
    };
    assert_eq!(
        check_mqtt(Some(&mqtt(format!("mqtt://{addr}")))).status,
        Status::Pass
    );
    drop(held);
    assert_eq!(
        check_mqtt(Some(&mqtt(format!("mqtt://{addr}")))).status,
        Status::Fail
    );
    assert_eq!(check_mqtt(None).status, Status::Skip);
}

#[test]
fn a_panicking_check_is_a_failure() {
    let c = guarded("boom", || panic!("on purpose"));
    assert_eq!(c[0].status, Status::Fail);
    assert!(c[0].detail.contains("on purpose"));
}

#[test]
fn advisory_failures_do_not_fail_the_run() {
    let r = Report {
        checks: vec![
            Check::pass("a", ""),
            Check::fail("b", "", "").needed(false),
            Check::skip("c", ""),
        ],
    };
    assert_eq!(r.failures(), 0);
    assert!(r.to_string().contains("– b"));
}

#[test]
fn reject_timing_needs_fifo_and_a_spin_window_unless_the_kernel_is_preempt_rt() {
    use crate::line::setup::LineConfig;
    let (_d, r) = fake_root();
    let line = |prio: u8, spin: u64| LineConfig {
        realtime_priority: prio,
        reject_spin_us: spin,
        ..Default::default()
    };
    assert_eq!(
        check_reject_timing(&r, &line(50, 2_000)).status,
        Status::Pass
    );
    let c = check_reject_timing(&r, &line(50, 0));
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.unwrap().contains("line.reject_spin_us = 2000"));
    let c = check_reject_timing(&r, &line(0, 2_000));
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("line.realtime_priority"));
    touch(&r.path("/sys/kernel/realtime"), "1\n");
    let c = check_reject_timing(&r, &line(50, 0));
    assert_eq!(c.status, Status::Pass, "{c}");
    assert!(c.detail.contains("PREEMPT_RT"));
}

#[test]
fn opcua_certificate_absent_unreadable_and_in_date() {
    use crate::sinks::opcua::OpcuaConfig;
    let dir = tempfile::tempdir().unwrap();
    let cfg = OpcuaConfig {
        listen: "127.0.0.1:0".into(),
        pki_dir: dir.path().join("pki"),
        ..Default::default()
    };
    let checks = check_opcua(Some(&cfg));
    assert_eq!(checks[0].status, Status::Pass, "{:?}", checks[0]);
    assert!(
        checks[1].detail.contains("created at start"),
        "{:?}",
        checks[1]
    );
    let own = dir.path().join("pki/own");
    std::fs::create_dir_all(&own).unwrap();
    touch(&own.join("cert.der"), "not a certificate");
    assert_eq!(check_opcua(Some(&cfg))[1].status, Status::Fail);
    let (x509, _) = ::opcua::crypto::X509::cert_and_pkey(&::opcua::crypto::X509Data {
        certificate_duration_days: 10,
        ..::opcua::crypto::X509Data::sample_cert()
    })
    .unwrap();
    std::fs::write(own.join("cert.der"), x509.to_der().unwrap()).unwrap();
    let cert = &check_opcua(Some(&cfg))[1];
    assert_eq!(cert.status, Status::Pass, "{cert:?}");
    assert!(cert.detail.contains("renew it soon"), "{cert:?}");
    // Off loopback without users the endpoint is refused by key.
    let exposed = OpcuaConfig {
        listen: "0.0.0.0:0".into(),
        ..cfg
    };
    let endpoint = &check_opcua(Some(&exposed))[0];
    assert_eq!(endpoint.status, Status::Fail);
    assert!(endpoint.detail.contains("opcua.expose"), "{endpoint:?}");
}
