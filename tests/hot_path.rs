//! The frame path keeps the promise its docs make: once warm, preprocessing and the decision
//! allocate nothing per frame, and the engine inspector allocates no image- or map-sized buffer
//! (maps come back from the line and are refilled). Counted by a global allocator that tallies
//! the allocations of the calling thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use diffad::frame::{Frame, PixelFormat, Roi};
use diffad::model::manifest::Manifest;
use diffad::stages::decide::decide;
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::{EngineInspector, Inspector};
use diffad::stages::preprocess::Preprocessor;

struct Counting;

thread_local! {
    /// (allocations, bytes) made by this thread.
    static TALLY: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn note(bytes: usize) {
    let _ = TALLY.try_with(|t| {
        let (n, b) = t.get();
        t.set((n + 1, b + bytes as u64));
    });
}

// SAFETY: forwards to the system allocator; the tally is a plain thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations and bytes `f` made on this thread.
fn counted(f: impl FnOnce()) -> (u64, u64) {
    let before = TALLY.with(Cell::get);
    f();
    let after = TALLY.with(Cell::get);
    (after.0 - before.0, after.1 - before.1)
}

fn frame(width: u32, height: u32, format: PixelFormat, seed: u8) -> Frame {
    let bpp = match format {
        PixelFormat::Grey8 => 1,
        PixelFormat::Rgb8 => 3,
        PixelFormat::Yuyv => 2,
        PixelFormat::Mjpeg => unreachable!("decoded frames are not on the raw path"),
    };
    let n = (width * height) as usize * bpp;
    Frame {
        seq: 0,
        timestamp_ns: 0,
        width,
        height,
        format,
        data: (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect(),
        truth: None,
        origin: "camera".into(),
    }
}

fn brick() -> std::path::PathBuf {
    common::root().join("models/tiles-brick/model.onnx")
}

#[test]
fn preprocessing_allocates_nothing_per_frame() {
    let spec = Manifest::read(&brick()).expect("shipped model").input;
    let len = spec.channels * spec.height * spec.width;
    let mut out = vec![0.0f32; len];
    let cases = [
        // model size: scaled only; larger: resized; with a region of interest; colour formats.
        (frame(128, 128, PixelFormat::Grey8, 1), None),
        (frame(320, 240, PixelFormat::Grey8, 2), None),
        (
            frame(640, 480, PixelFormat::Yuyv, 3),
            Some(Roi {
                x: 100,
                y: 60,
                width: 300,
                height: 260,
            }),
        ),
        (frame(200, 150, PixelFormat::Rgb8, 4), None),
    ];
    for (f, roi) in &cases {
        let mut pre = Preprocessor::new(&spec, *roi);
        pre.run(f, &mut out).expect("warm-up frame");
        let (n, bytes) = counted(|| {
            for _ in 0..50 {
                pre.run(f, &mut out).expect("frame");
                assert!(decide(out[0], 0.5).is_ok());
            }
        });
        assert_eq!(
            (n, bytes),
            (0, 0),
            "{}×{} {:?} roi {roi:?}: allocations over 50 frames",
            f.width,
            f.height,
            f.format
        );
    }
}

#[test]
fn the_engine_inspector_refills_returned_maps_instead_of_allocating() {
    let engine = Engine::load(&EngineConfig::cpu(brick())).expect("shipped brick model loads");
    let map_bytes = (engine.manifest().input.height * engine.manifest().input.width * 4) as u64;
    let mut insp = EngineInspector::new(engine, None, None).expect("calibrated model");
    let f = frame(128, 128, PixelFormat::Grey8, 7);
    for _ in 0..3 {
        let r = insp.inspect(&[&f]).pop().unwrap().expect("scores");
        insp.recycle_map(r.map);
    }
    let frames = 30u64;
    let (n, bytes) = counted(|| {
        for _ in 0..frames {
            let r = insp.inspect(&[&f]).pop().unwrap().expect("scores");
            assert!(r.score.is_finite());
            insp.recycle_map(r.map);
        }
    });
    // What remains is ONNX Runtime's per-call bookkeeping on the Rust side (input and output
    // descriptors) and the result list: small, never a frame or a map.
    println!("engine path: {n} allocations, {bytes} bytes over {frames} frames");
    assert!(
        bytes / frames < map_bytes / 8,
        "{} bytes per frame: a map is {map_bytes} bytes, so something map-sized is still allocated",
        bytes / frames
    );

    // Without the maps coming back it does allocate one per frame (after the one spare it
    // holds): the check above can fail.
    let (_, without) = counted(|| {
        for _ in 0..frames {
            let r = insp.inspect(&[&f]).pop().unwrap().expect("scores");
            drop(r);
        }
    });
    assert!(
        without >= (frames - 1) * map_bytes,
        "{without} bytes over {frames} frames"
    );
}
