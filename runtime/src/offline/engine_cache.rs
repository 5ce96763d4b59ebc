//! `diffad build-engine`: the TensorRT engine cache for the configured model.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::stages::engine::tensorrt_cache;
use crate::stages::engine::{Engine, EngineConfig};

/// `diffad build-engine`: build (or reuse) the TensorRT engine for the configured model.
pub fn build_engine(config: &EngineConfig) -> Result<()> {
    let Some((dir, built)) = tensorrt_cache(config)? else {
        bail!("engine.providers does not list \"tensorrt\": there is no engine to build");
    };
    let mut config = config.clone();
    // Building must not quietly end up on another provider.
    config.allow_fallback = false;
    if built {
        println!(
            "build-engine: cached engine found in {}; verifying it loads",
            dir.display()
        );
    } else {
        println!(
            "build-engine: no cached engine in {}; building (this takes minutes on a Jetson)",
            dir.display()
        );
    }
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_secs(10));
                if !done.load(std::sync::atomic::Ordering::Relaxed) {
                    println!(
                        "build-engine: still building… {:.0} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        })
    };
    let result = Engine::load(&config).and_then(|mut e| {
        // TensorRT builds lazily on the first run.
        let n = e.batch_size();
        e.run(n).map(|_| e)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().ok();
    let engine = result?;
    println!(
        "build-engine: ready in {:.1} s on {}; cache {}",
        start.elapsed().as_secs_f64(),
        engine.providers().join(" > "),
        dir.display()
    );
    match engine.self_test() {
        Some(r) => println!("build-engine: self-test {r}"),
        None => println!("build-engine: self-test skipped (engine.self_test.enabled = false)"),
    }
    Ok(())
}
