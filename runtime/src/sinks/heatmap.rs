//! Heatmap overlays for people: the anomaly map in the turbo colour map over the image, with the
//! threshold contour drawn in white.

use image::{Rgb, RgbImage};

use crate::frame::Roi;
use crate::frame::{Frame, PixelFormat};

/// Blend weight of the colour map over the image.
const ALPHA: f32 = 0.45;

/// Render `map` (`mw × mh`, values in [0, 1]) over `frame` at the frame's size.
pub fn overlay(
    frame: &Frame,
    map: &[f32],
    mw: u32,
    mh: u32,
    threshold: f32,
) -> Result<RgbImage, String> {
    overlay_in(frame, map, mw, mh, None, threshold)
}

/// Render `map` over the region `roi` of `frame` (the whole frame when `None`); pixels outside
/// the region were not inspected and are shown as they are.
pub fn overlay_in(
    frame: &Frame,
    map: &[f32],
    mw: u32,
    mh: u32,
    roi: Option<Roi>,
    threshold: f32,
) -> Result<RgbImage, String> {
    let base = to_rgb(frame)?;
    let (fw, fh) = base.dimensions();
    let r = roi
        .filter(|r| r.x + r.width <= fw && r.y + r.height <= fh)
        .unwrap_or(Roi {
            x: 0,
            y: 0,
            width: fw,
            height: fh,
        });
    let (w, h) = (r.width, r.height);
    // Nearest sampling keeps the contour crisp and the map values unaltered.
    let sample = |x: u32, y: u32| -> f32 {
        let mx = ((x as u64 * mw as u64) / w as u64) as usize;
        let my = ((y as u64 * mh as u64) / h as u64) as usize;
        map[my * mw as usize + mx]
    };
    let mut out = base.clone();
    for y in 0..h {
        for x in 0..w {
            let v = sample(x, y);
            let above = v >= threshold;
            let edge = above
                && [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)]
                    .iter()
                    .any(|(dx, dy)| {
                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                        nx >= 0
                            && ny >= 0
                            && (nx as u32) < w
                            && (ny as u32) < h
                            && sample(nx as u32, ny as u32) < threshold
                    });
            let px = if edge {
                Rgb([255, 255, 255])
            } else {
                let c = turbo(v);
                let b = base.get_pixel(r.x + x, r.y + y).0;
                Rgb(std::array::from_fn(|i| {
                    (b[i] as f32 * (1.0 - ALPHA) + c[i] as f32 * ALPHA).round() as u8
                }))
            };
            out.put_pixel(r.x + x, r.y + y, px);
        }
    }
    Ok(out)
}

/// The frame as an RGB image (MJPEG decoded, YUYV converted).
pub fn to_rgb(frame: &Frame) -> Result<RgbImage, String> {
    let (w, h) = (frame.width, frame.height);
    let n = (w * h) as usize;
    let raw: Vec<u8> = match frame.format {
        PixelFormat::Grey8 if frame.data.len() == n => {
            frame.data.iter().flat_map(|&g| [g, g, g]).collect()
        }
        PixelFormat::Rgb8 if frame.data.len() == 3 * n => frame.data.clone(),
        PixelFormat::Yuyv if frame.data.len() == 2 * n => frame
            .data
            .iter()
            .step_by(2)
            .flat_map(|&g| [g, g, g])
            .collect(),
        PixelFormat::Mjpeg => {
            return image::load_from_memory(&frame.data)
                .map(|i| i.into_rgb8())
                .map_err(|e| e.to_string());
        }
        _ => {
            return Err(format!(
                "frame {} has {} bytes for {w}×{h} {:?}",
                frame.origin,
                frame.data.len(),
                frame.format
            ))
        }
    };
    RgbImage::from_raw(w, h, raw).ok_or_else(|| "frame size mismatch".into())
}

/// Google's Turbo colour map, polynomial approximation (max error under 1 %).
pub fn turbo(v: f32) -> [u8; 3] {
    let x = v.clamp(0.0, 1.0) as f64;
    let r = 0.13572138
        + x * (4.61539260
            + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))));
    let g = 0.09140261
        + x * (2.19418839
            + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))));
    let b = 0.10667330
        + x * (12.64194608
            + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))));
    [r, g, b].map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contour_marks_threshold_edge() {
        let frame = Frame {
            seq: 0,
            timestamp_ns: 0,
            width: 4,
            height: 1,
            format: PixelFormat::Grey8,
            data: vec![0; 4],
            truth: None,
            origin: "t".into(),
        };
        let img = overlay(&frame, &[0.0, 0.0, 0.9, 0.9], 4, 1, 0.5).unwrap();
        assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
        assert_ne!(img.get_pixel(3, 0).0, [255, 255, 255]);
        // A map of a region lands on that region; the rest of the frame is left as it is.
        let roi = Roi {
            x: 2,
            y: 0,
            width: 2,
            height: 1,
        };
        let img = overlay_in(&frame, &[0.0, 0.9], 2, 1, Some(roi), 0.5).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 0).0, [255, 255, 255]);
        assert_ne!(img.get_pixel(2, 0).0, [0, 0, 0]);
        // Low values are blue-ish, high values red-ish.
        assert!(turbo(0.05)[2] > turbo(0.05)[0]);
        assert!(turbo(0.95)[0] > turbo(0.95)[2]);
    }
}
