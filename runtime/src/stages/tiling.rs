//! Tiled inspection: the region of interest cut into model-sized tiles at native resolution.
//!
//! Instead of resizing the whole ROI to the model size (which shrinks small defects away), the
//! ROI is covered by a grid of `H × W` tiles: stride `W − overlap`, the last column and row
//! aligned to the ROI's right and bottom edges (they overlap their neighbours more; nothing is
//! padded or resized). Tiles go through the engine in batches of the graph's static batch N
//! (the last batch padded), so a frame costs ⌈tiles / N⌉ session calls. The part's score is
//! the MAXIMUM of its tile scores: a defect in any tile rejects the part, and the per-tile
//! threshold calibrated on model-sized tiles keeps its meaning. The anomaly map is stitched at
//! ROI resolution, the maximum where tiles overlap.
//!
//! Every buffer (the ROI at native resolution, the stitched map, the tile grid) is allocated
//! once and reused; the grid is rebuilt only when the frame size changes.

use crate::config::Invalid;
use crate::frame::{Frame, Roi};
use crate::model::manifest::InputSpec;
use crate::sources::camera::config::{CameraConfig, SourceKind, TilingConfig};
use crate::stages::engine::Engine;
use crate::stages::inspect::{InspectError, Inspection, Inspector};
use crate::stages::preprocess::Preprocessor;

/// Tile origins along one axis of `len` pixels for tiles of `tile` with at least `overlap`.
pub fn positions(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len < tile || tile == 0 {
        return Vec::new();
    }
    let stride = tile.saturating_sub(overlap).max(1);
    let last = len - tile;
    let mut v: Vec<u32> = (0..)
        .map(|i| i * stride)
        .take_while(|&p| p < last)
        .collect();
    v.push(last);
    v
}

/// The tile origins `(x, y)` covering a `width × height` region, row by row.
pub fn grid(width: u32, height: u32, tile_w: u32, tile_h: u32, overlap: u32) -> Vec<(u32, u32)> {
    let xs = positions(width, tile_w, overlap);
    positions(height, tile_h, overlap)
        .into_iter()
        .flat_map(|y| xs.iter().map(move |&x| (x, y)))
        .collect()
}

/// The larger score, NaN if either is: a tile that did not score makes the part fail safe
/// (`decide` refuses a score that is not finite), where `f32::max` would drop it.
pub fn worst(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Check the region against the model's input size where it is known before the first
/// frame: tiles must fit (`camera.tiling`), and a resized region must not be smaller than
/// the model unless `camera.allow_upscale`.
pub fn check_model(camera: &CameraConfig, spec: &InputSpec) -> Result<(), Invalid> {
    camera.check_channels(spec.channels)?;
    if camera.tiling.enabled {
        return check(camera, spec);
    }
    if camera.allow_upscale {
        return Ok(());
    }
    let (mw, mh) = (spec.width as u32, spec.height as u32);
    let small = |key: &str, what: &str, w: u32, h: u32| {
        Invalid::new(
            key,
            format!(
                "{what} {w}×{h} is smaller than the model's {mw}×{mh} input and would be upscaled, \
                 which invents the detail the model judges; enlarge it, or set camera.allow_upscale = true"
            ),
        )
    };
    let (key, what, w, h) = match (&camera.roi, camera.source) {
        (Some(r), _) => (
            if r.width < mw {
                "camera.roi.width"
            } else {
                "camera.roi.height"
            },
            "the region",
            r.width,
            r.height,
        ),
        (None, SourceKind::V4l2) => (
            if camera.v4l2.width < mw {
                "camera.v4l2.width"
            } else {
                "camera.v4l2.height"
            },
            "the frame",
            camera.v4l2.width,
            camera.v4l2.height,
        ),
        (None, SourceKind::Sim) => (
            "camera.sim.tile",
            "the simulated frame",
            camera.sim.tile,
            camera.sim.tile,
        ),
        (None, SourceKind::Genicam) => (
            if camera.genicam.width < mw {
                "camera.genicam.width"
            } else {
                "camera.genicam.height"
            },
            "the frame",
            camera.genicam.width,
            camera.genicam.height,
        ),
        // Replayed images, and a pipeline's frames, are checked one by one as they come.
        (None, SourceKind::Replay | SourceKind::Gstreamer) => return Ok(()),
    };
    if w < mw || h < mh {
        return Err(small(key, what, w, h));
    }
    Ok(())
}

/// Check the tiling settings against the model's input size; errors name the board key.
pub fn check(camera: &CameraConfig, spec: &InputSpec) -> Result<(), Invalid> {
    if !camera.tiling.enabled {
        return Ok(());
    }
    let (tw, th) = (spec.width as u32, spec.height as u32);
    if camera.tiling.overlap >= tw.min(th) {
        return Err(Invalid::new(
            "camera.tiling.overlap",
            format!(
                "{} px must be smaller than the model's {tw}×{th} tile",
                camera.tiling.overlap
            ),
        ));
    }
    let small = |key: &str, what: &str, w: u32, h: u32| {
        Invalid::new(
            key,
            format!(
                "{what} {w}×{h} is smaller than one {tw}×{th} tile of the model; enlarge it or turn camera.tiling off"
            ),
        )
    };
    if let Some(r) = &camera.roi {
        if r.width < tw {
            return Err(small("camera.roi.width", "the region", r.width, r.height));
        }
        if r.height < th {
            return Err(small("camera.roi.height", "the region", r.width, r.height));
        }
        return Ok(());
    }
    // No ROI: the whole frame is the region, where its size is known before the first frame.
    match camera.source {
        SourceKind::V4l2 if camera.v4l2.width < tw || camera.v4l2.height < th => Err(small(
            "camera.v4l2.width",
            "the frame",
            camera.v4l2.width,
            camera.v4l2.height,
        )),
        SourceKind::Genicam if camera.genicam.width < tw || camera.genicam.height < th => {
            Err(small(
                "camera.genicam.width",
                "the frame",
                camera.genicam.width,
                camera.genicam.height,
            ))
        }
        SourceKind::Sim if camera.sim.tile < tw.max(th) => Err(small(
            "camera.sim.tile",
            "the simulated frame",
            camera.sim.tile,
            camera.sim.tile,
        )),
        _ => Ok(()),
    }
}

/// The tiled inspector: one frame per call, its tiles in batches of the graph's N.
pub struct TiledInspector {
    engine: Engine,
    pre: Preprocessor,
    overlap: u32,
    threshold: f32,
    roi: Option<Roi>,
    /// The ROI at native resolution, `C × h × w` planar, model range.
    native: Vec<f32>,
    /// Stitched map of the current frame, `h × w`.
    stitched: Vec<f32>,
    /// Region size the grid was built for, and the grid.
    grid: ((u32, u32), Vec<(u32, u32)>),
    tiles: u64,
}

impl TiledInspector {
    /// Wrap a loaded engine; `roi` as `camera.roi`, the threshold as in `EngineInspector::new`.
    pub fn new(
        engine: Engine,
        roi: Option<Roi>,
        tiling: &TilingConfig,
        threshold: Option<f32>,
    ) -> Result<Self, InspectError> {
        let threshold = crate::stages::inspect::threshold_of(&engine, threshold)?;
        let spec = engine.manifest().input.clone();
        if tiling.overlap >= spec.width.min(spec.height) as u32 {
            return Err(InspectError(format!(
                "camera.tiling.overlap {} must be smaller than the model's {}×{} tile",
                tiling.overlap, spec.width, spec.height
            )));
        }
        log::info!(
            "tiling: {}×{} tiles at native resolution, overlap ≥ {} px, {} per session call; part score = max over tiles",
            spec.width,
            spec.height,
            tiling.overlap,
            spec.batch
        );
        Ok(Self {
            pre: Preprocessor::new(&spec, roi),
            engine,
            overlap: tiling.overlap,
            threshold,
            roi,
            native: Vec::new(),
            stitched: Vec::new(),
            grid: ((0, 0), Vec::new()),
            tiles: 0,
        })
    }

    /// The engine inside.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Tiles inspected so far.
    pub fn tiles_inspected(&self) -> u64 {
        self.tiles
    }

    /// The tile origins of the last frame's region.
    pub fn last_grid(&self) -> &[(u32, u32)] {
        &self.grid.1
    }

    fn inspect_one(&mut self, frame: &Frame) -> Result<Inspection, InspectError> {
        let (w, h) = self
            .pre
            .run_native(frame, &mut self.native)
            .map_err(|e| InspectError(e.to_string()))?;
        let spec = &self.engine.manifest().input;
        let (tw, th, c, n) = (spec.width, spec.height, spec.channels, spec.batch);
        if self.grid.0 != (w, h) {
            let g = grid(w, h, tw as u32, th as u32, self.overlap);
            if g.is_empty() {
                return Err(InspectError(format!(
                    "frame {}: region {w}×{h} is smaller than one {tw}×{th} tile of the model (camera.roi, camera.tiling)",
                    frame.origin
                )));
            }
            log::debug!("tiling: {w}×{h} region → {} tiles", g.len());
            self.grid = ((w, h), g);
        }
        let (wu, hu) = (w as usize, h as usize);
        self.stitched.clear();
        self.stitched.resize(wu * hu, f32::NEG_INFINITY);
        let len = c * th * tw;
        let range = self.engine.manifest().score_range();
        let mut score = f32::NEG_INFINITY;
        // The first tile whose output is unusable; the stitched maximum would hide a NaN tile.
        let mut bad: Option<((u32, u32), crate::stages::inspect::OutputError)> = None;
        let tiles = &self.grid.1;
        for batch in tiles.chunks(n) {
            let input = self.engine.input_mut();
            for (slot, &(x0, y0)) in batch.iter().enumerate() {
                let out = &mut input[slot * len..(slot + 1) * len];
                for ch in 0..c {
                    let src = &self.native[ch * wu * hu..(ch + 1) * wu * hu];
                    for r in 0..th {
                        let s = (y0 as usize + r) * wu + x0 as usize;
                        out[ch * th * tw + r * tw..][..tw].copy_from_slice(&src[s..s + tw]);
                    }
                }
            }
            // Pad the last batch; its results are not read.
            input[batch.len() * len..].fill(0.0);
            let stitched = &mut self.stitched;
            self.engine
                .run_visit(batch.len(), |b, s, map| {
                    score = worst(score, s);
                    if bad.is_none() {
                        if let Err(e) = crate::stages::inspect::check_output(s, map, tw, range) {
                            bad = Some((batch[b], e));
                        }
                    }
                    let (x0, y0) = (batch[b].0 as usize, batch[b].1 as usize);
                    for (r, row) in map.chunks_exact(tw).enumerate() {
                        let dst = &mut stitched[(y0 + r) * wu + x0..][..tw];
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d = d.max(v);
                        }
                    }
                })
                .map_err(|e| InspectError(e.to_string()))?;
        }
        self.tiles += tiles.len() as u64;
        if let Some(((x, y), e)) = bad {
            let at = format!("{} (tile at {x}, {y})", frame.origin);
            return Err(crate::stages::inspect::output_error(&self.engine, &at, e));
        }
        Ok(Inspection {
            score,
            map: self.stitched.clone(),
            map_width: w,
            map_height: h,
            map_roi: self.roi,
        })
    }
}

impl Inspector for TiledInspector {
    fn batch_size(&self) -> usize {
        // One frame per call: its tiles fill the engine's batches.
        1
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }

    fn good_scores(&self) -> Result<crate::stages::drift::Reference, String> {
        Err("a tiled part scores the worst of its tiles, and the model's good-score statistics are of single tiles".into())
    }

    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>> {
        frames.iter().map(|f| self.inspect_one(f)).collect()
    }
}

/// Wrap a loaded engine as the line does: tiled when `camera.tiling.enabled`, else the whole
/// ROI (or frame) resized to the model size (refusing smaller ones unless `allow_upscale`).
pub fn inspector_for(
    engine: Engine,
    camera: Option<&CameraConfig>,
    threshold: Option<f32>,
    allow_upscale: bool,
) -> Result<Box<dyn Inspector>, InspectError> {
    match camera {
        Some(cam) if cam.tiling.enabled => {
            check(cam, &engine.manifest().input).map_err(|e| InspectError(e.to_string()))?;
            Ok(Box::new(TiledInspector::new(
                engine,
                cam.roi,
                &cam.tiling,
                threshold,
            )?))
        }
        _ => Ok(Box::new(
            crate::stages::inspect::EngineInspector::new(
                engine,
                camera.and_then(|c| c.roi),
                threshold,
            )?
            .allow_upscale(allow_upscale),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_tile_is_aligned_to_the_edge() {
        assert_eq!(positions(640, 128, 0), vec![0, 128, 256, 384, 512]);
        assert_eq!(positions(480, 128, 0), vec![0, 128, 256, 352]);
        assert_eq!(positions(128, 128, 0), vec![0]);
        assert_eq!(positions(127, 128, 0), Vec::<u32>::new());
        assert_eq!(positions(300, 128, 32), vec![0, 96, 172]);
        assert_eq!(positions(129, 128, 0), vec![0, 1]);
        assert_eq!(grid(640, 480, 128, 128, 0).len(), 20);
        for (len, tile, ov) in [(1000, 96, 17), (333, 64, 0), (64, 64, 63)] {
            let p = positions(len, tile, ov);
            assert_eq!(*p.last().unwrap() + tile, len, "covers to the edge");
            assert!(p
                .windows(2)
                .all(|w| w[1] > w[0] && w[1] - w[0] <= tile - ov));
        }
    }

    #[test]
    fn a_nan_tile_is_not_hidden_by_max() {
        assert_eq!(worst(0.2, 0.7), 0.7);
        assert!(worst(0.9, f32::NAN).is_nan());
        assert!(worst(f32::NAN, 0.9).is_nan());
        assert_eq!(worst(f32::NEG_INFINITY, 0.1), 0.1);
    }

    fn spec() -> InputSpec {
        InputSpec {
            name: "image".into(),
            batch: 4,
            channels: 1,
            height: 128,
            width: 128,
            range: [0.0, 1.0],
            resize: "bilinear".into(),
        }
    }

    #[test]
    fn check_names_the_key() {
        let mut cam = CameraConfig::default();
        cam.tiling.enabled = true;
        cam.sim.tile = 64;
        assert_eq!(check(&cam, &spec()).unwrap_err().key, "camera.sim.tile");
        cam.sim.tile = 128;
        assert!(check(&cam, &spec()).is_ok());
        cam.roi = Some(Roi {
            x: 0,
            y: 0,
            width: 640,
            height: 100,
        });
        assert_eq!(check(&cam, &spec()).unwrap_err().key, "camera.roi.height");
        cam.roi = None;
        cam.tiling.overlap = 128;
        assert_eq!(
            check(&cam, &spec()).unwrap_err().key,
            "camera.tiling.overlap"
        );
        cam.tiling.enabled = false;
        assert!(check(&cam, &spec()).is_ok(), "off: nothing to check");
    }
}
