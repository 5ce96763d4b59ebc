//! `scripts/jetson-ort` (run by `scripts/setup` and `scripts/deploy` on a Jetson) against fake
//! roots: what it reports, the ORT_DYLIB_PATH it finds, and what it writes for the service.

mod common;

use common::root;
use std::path::Path;
use std::process::Command;

fn touch(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn jetson_ort(fake: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(root().join("scripts/jetson-ort"))
        .args(args)
        .env("FAKE_ROOT", fake)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// An Orin Nano on JetPack 6 (L4T 36.4.3, CUDA 12.6, TensorRT 10.3) without ONNX Runtime.
fn orin(fake: &Path) {
    touch(
        &fake.join("etc/nv_tegra_release"),
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    );
    touch(
        &fake.join("proc/device-tree/model"),
        "NVIDIA Jetson Orin Nano Developer Kit\0",
    );
    touch(
        &fake.join("usr/local/cuda/version.json"),
        "{\n \"cuda\" : {\n  \"name\" : \"CUDA SDK\",\n  \"version\" : \"12.6.68\"\n }\n}\n",
    );
    touch(
        &fake.join("usr/lib/aarch64-linux-gnu/libnvinfer.so.10.3.0"),
        "",
    );
}

const CAPI: &str = "usr/local/lib/python3.10/dist-packages/onnxruntime/capi";

#[test]
fn not_a_jetson_says_so() {
    let fake = tempfile::tempdir().unwrap();
    let (code, out) = jetson_ort(fake.path(), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a Jetson"), "{out}");
}

#[test]
fn versions_and_what_to_install_when_no_gpu_build() {
    let fake = tempfile::tempdir().unwrap();
    orin(fake.path());
    // A CPU-only library is found but is not what the Jetson boards need.
    touch(&fake.path().join(CAPI).join("libonnxruntime.so.1.20.0"), "");
    let (code, out) = jetson_ort(fake.path(), &[]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "Orin Nano",
        "36.4.3",
        "JetPack 6",
        "12.6.68",
        "10.3.0",
        "onnxruntime-gpu",
        "jp6/cu126",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    let (code, out) = jetson_ort(fake.path(), &["--path"]);
    assert_eq!((code, out.as_str()), (1, ""));
}

#[test]
fn a_gpu_build_gives_the_path_and_deploy_writes_it() {
    let fake = tempfile::tempdir().unwrap();
    orin(fake.path());
    let capi = fake.path().join(CAPI);
    touch(&capi.join("libonnxruntime.so.1.20.0"), "");
    touch(&capi.join("libonnxruntime_providers_tensorrt.so"), "");
    let want = format!("/{CAPI}/libonnxruntime.so.1.20.0");
    let (code, out) = jetson_ort(fake.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("ORT_DYLIB_PATH={want}")), "{out}");
    let (code, out) = jetson_ort(fake.path(), &["--path"]);
    assert_eq!((code, out.trim()), (0, want.as_str()));

    // The environment file scripts/deploy leaves: the placeholder comment gives way to the path.
    let env = fake.path().join("staged/etc/diffad/environment");
    touch(
        &env,
        "# ORT_DYLIB_PATH=/usr/lib/aarch64-linux-gnu/libonnxruntime.so\nRUST_LOG=info\n",
    );
    let (code, out) = jetson_ort(fake.path(), &["--write-env", env.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&env).unwrap();
    assert_eq!(text, format!("ORT_DYLIB_PATH={want}\nRUST_LOG=info\n"));
    // Twice is the same as once.
    jetson_ort(fake.path(), &["--write-env", env.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&env).unwrap(), text);
}
