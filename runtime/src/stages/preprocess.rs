//! Frame → model tensor: decode, ROI crop, channel conversion, bilinear resize, range scaling.
//!
//! Follows ARCHITECTURE.md §5 so that scores match the exporter's: grey is Pillow's integer
//! luma, resize is bilinear with half-pixel centres and no antialiasing (cv2 `INTER_LINEAR`),
//! value = lo + (hi − lo) · p / 255. Scratch buffers are kept between frames.

use crate::frame::{luma, Frame, PixelFormat, Roi};
use crate::model::manifest::InputSpec;

/// Why a frame could not be turned into a tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// Byte count disagrees with size and format.
    #[error("frame {origin}: {got} bytes, but {width}×{height} {format:?} needs {want}")]
    Size {
        /// Frame origin.
        origin: String,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        want: usize,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Pixel format.
        format: PixelFormat,
    },
    /// The ROI lies outside the frame.
    #[error("ROI {roi:?} does not fit inside frame {origin} of {width}×{height}; fix camera.roi")]
    Roi {
        /// Frame origin.
        origin: String,
        /// The ROI.
        roi: Roi,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
    },
    /// A JPEG frame did not decode.
    #[error("frame {origin}: JPEG does not decode: {reason}")]
    Decode {
        /// Frame origin.
        origin: String,
        /// Decoder's message.
        reason: String,
    },
    /// Empty frame.
    #[error("frame {0} is empty (0×0)")]
    Empty(String),
    /// The region to resize is smaller than the model's input and upscaling is not allowed.
    #[error(
        "image {origin}: {width}×{height} is smaller than the model's {model_width}×{model_height} input; \
         upscaling invents the detail the model judges. Use images at least the model's size, or allow it \
         with --allow-upscale (infer, eval) or camera.allow_upscale = true (run)"
    )]
    TooSmall {
        /// Frame origin.
        origin: String,
        /// Width of the frame (or ROI).
        width: u32,
        /// Height of the frame (or ROI).
        height: u32,
        /// Model input width.
        model_width: usize,
        /// Model input height.
        model_height: usize,
    },
}

/// Converts frames into one image slot of the engine's input tensor.
pub struct Preprocessor {
    spec: InputSpec,
    roi: Option<Roi>,
    /// ROI pixels in the model's channel count, interleaved, reused between frames.
    plane: Vec<u8>,
    /// Interpolation taps along x and y, rebuilt only when the source size changes.
    taps: Option<Taps>,
    scale: f32,
    offset: f32,
    allow_upscale: bool,
    /// Region size last warned about as upscaled, so a stream of them warns once.
    warned_upscale: Option<(u32, u32)>,
}

/// Source size the taps were built for, then the x and y taps.
type Taps = ((u32, u32), Vec<Tap>, Vec<Tap>);

#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

impl Preprocessor {
    /// A preprocessor for the model input `spec`, cropping `roi` first when given.
    pub fn new(spec: &InputSpec, roi: Option<Roi>) -> Self {
        let [lo, hi] = spec.range;
        Self {
            spec: spec.clone(),
            roi,
            plane: Vec::new(),
            taps: None,
            scale: (hi - lo) / 255.0,
            offset: lo,
            allow_upscale: false,
            warned_upscale: None,
        }
    }

    /// Resize regions smaller than the model's input up to it (logging a warning) instead of
    /// refusing them with [`PreprocessError::TooSmall`].
    pub fn set_allow_upscale(&mut self, allow: bool) {
        self.allow_upscale = allow;
    }

    /// Elements written per frame (C × H × W).
    pub fn len(&self) -> usize {
        self.spec.channels * self.spec.height * self.spec.width
    }

    /// True when the model input is empty (never for a valid manifest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `out` (one image, `C × H × W`, planar) from `frame`.
    pub fn run(&mut self, frame: &Frame, out: &mut [f32]) -> Result<(), PreprocessError> {
        assert_eq!(out.len(), self.len(), "output slot must hold one image");
        let (w, h) = self.fill_plane(frame)?;
        let c = self.spec.channels;
        let (mw, mh) = (self.spec.width, self.spec.height);
        if (w as usize) < mw || (h as usize) < mh {
            if !self.allow_upscale {
                return Err(PreprocessError::TooSmall {
                    origin: frame.origin.clone(),
                    width: w,
                    height: h,
                    model_width: mw,
                    model_height: mh,
                });
            }
            if self.warned_upscale != Some((w, h)) {
                self.warned_upscale = Some((w, h));
                log::warn!(
                    "image {}: {w}×{h} is upscaled to the model's {mw}×{mh} input (allowed); its score may not mean what the threshold was calibrated for",
                    frame.origin
                );
            }
        }
        let plane_len = mw * mh;
        if (w as usize, h as usize) == (mw, mh) {
            self.scale_plane(out);
            return Ok(());
        }
        if self.taps.as_ref().map(|t| t.0) != Some((w, h)) {
            self.taps = Some(((w, h), taps(w as usize, mw), taps(h as usize, mh)));
        }
        let (_, xt, yt) = self.taps.as_ref().expect("taps set above");
        let stride = w as usize * c;
        for (oy, ty) in yt.iter().enumerate() {
            let (r0, r1) = (&self.plane[ty.i0 * stride..], &self.plane[ty.i1 * stride..]);
            for (ox, tx) in xt.iter().enumerate() {
                for ch in 0..c {
                    let p = |row: &[u8], i: usize| row[i * c + ch] as f32;
                    let top = p(r0, tx.i0) + (p(r0, tx.i1) - p(r0, tx.i0)) * tx.f;
                    let bot = p(r1, tx.i0) + (p(r1, tx.i1) - p(r1, tx.i0)) * tx.f;
                    let v = top + (bot - top) * ty.f;
                    out[ch * plane_len + oy * mw + ox] = self.offset + self.scale * v;
                }
            }
        }
        Ok(())
    }

    /// Fill `out` with the ROI at its native resolution (no resize): `C × h × w` planar, values
    /// scaled to the model's range; returns `(w, h)`. `out` keeps its capacity between frames.
    pub fn run_native(
        &mut self,
        frame: &Frame,
        out: &mut Vec<f32>,
    ) -> Result<(u32, u32), PreprocessError> {
        let (w, h) = self.fill_plane(frame)?;
        out.clear();
        out.resize(self.spec.channels * w as usize * h as usize, 0.0);
        self.scale_plane(out);
        Ok((w, h))
    }

    /// `self.plane` (interleaved pixels) into `out` as planar channels scaled to the range, at
    /// the plane's own resolution.
    fn scale_plane(&self, out: &mut [f32]) {
        let c = self.spec.channels;
        let plane_len = self.plane.len() / c;
        for (i, px) in self.plane.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * plane_len + i] = self.offset + self.scale * v as f32;
            }
        }
    }

    /// Copy the ROI into `self.plane` with the model's channel count; returns its size.
    fn fill_plane(&mut self, frame: &Frame) -> Result<(u32, u32), PreprocessError> {
        let roi = self.checked_roi(frame)?;
        let decoded;
        let (src, fmt): (&[u8], PixelFormat) = if frame.format == PixelFormat::Mjpeg {
            decoded = decode_jpeg(frame)?;
            (&decoded, PixelFormat::Rgb8)
        } else {
            (&frame.data, frame.format)
        };
        let bpp = match fmt {
            PixelFormat::Grey8 => 1,
            PixelFormat::Rgb8 => 3,
            PixelFormat::Yuyv => 2,
            PixelFormat::Mjpeg => unreachable!("decoded above"),
        };
        let want = frame.width as usize * frame.height as usize * bpp;
        if src.len() != want {
            return Err(PreprocessError::Size {
                origin: frame.origin.clone(),
                got: src.len(),
                want,
                width: frame.width,
                height: frame.height,
                format: frame.format,
            });
        }
        self.copy_roi(src, fmt, frame.width as usize, roi);
        Ok((roi.width, roi.height))
    }

    /// The configured ROI (else the whole frame), refused when it leaves the frame.
    fn checked_roi(&self, frame: &Frame) -> Result<Roi, PreprocessError> {
        if frame.width == 0 || frame.height == 0 {
            return Err(PreprocessError::Empty(frame.origin.clone()));
        }
        let roi = self.roi.unwrap_or(Roi {
            x: 0,
            y: 0,
            width: frame.width,
            height: frame.height,
        });
        if roi.width == 0
            || roi.height == 0
            || roi.x.checked_add(roi.width).is_none_or(|r| r > frame.width)
            || roi
                .y
                .checked_add(roi.height)
                .is_none_or(|b| b > frame.height)
        {
            return Err(PreprocessError::Roi {
                origin: frame.origin.clone(),
                roi,
                width: frame.width,
                height: frame.height,
            });
        }
        Ok(roi)
    }

    /// Pixels of `roi` from `src` (`fmt`, rows of `fw` pixels) into `self.plane`, grey or RGB.
    fn copy_roi(&mut self, src: &[u8], fmt: PixelFormat, fw: usize, roi: Roi) {
        let c = self.spec.channels;
        self.plane.clear();
        self.plane
            .reserve(roi.width as usize * roi.height as usize * c);
        for y in roi.y as usize..(roi.y + roi.height) as usize {
            for x in roi.x as usize..(roi.x + roi.width) as usize {
                let rgb = match fmt {
                    PixelFormat::Grey8 => {
                        let g = src[y * fw + x];
                        [g, g, g]
                    }
                    PixelFormat::Rgb8 => {
                        let i = (y * fw + x) * 3;
                        [src[i], src[i + 1], src[i + 2]]
                    }
                    PixelFormat::Yuyv => yuyv_rgb(src, fw, x, y),
                    PixelFormat::Mjpeg => unreachable!("decoded before"),
                };
                if c == 1 {
                    let g = match fmt {
                        PixelFormat::Grey8 => rgb[0],
                        // The camera already measured luma; converting back and forth would blur it.
                        PixelFormat::Yuyv => src[(y * fw + x) * 2],
                        _ => luma(rgb),
                    };
                    self.plane.push(g);
                } else {
                    self.plane.extend_from_slice(&rgb);
                }
            }
        }
    }
}

/// An MJPEG frame as RGB bytes, refused when it does not decode to the size the frame says.
fn decode_jpeg(frame: &Frame) -> Result<Vec<u8>, PreprocessError> {
    let img = image::load_from_memory_with_format(&frame.data, image::ImageFormat::Jpeg).map_err(
        |e| PreprocessError::Decode {
            origin: frame.origin.clone(),
            reason: e.to_string(),
        },
    )?;
    if (img.width(), img.height()) != (frame.width, frame.height) {
        return Err(PreprocessError::Decode {
            origin: frame.origin.clone(),
            reason: format!(
                "decoded {}×{}, frame says {}×{}",
                img.width(),
                img.height(),
                frame.width,
                frame.height
            ),
        });
    }
    Ok(img.into_rgb8().into_raw())
}

fn yuyv_rgb(src: &[u8], width: usize, x: usize, y: usize) -> [u8; 3] {
    let pair = (y * width + (x & !1)) * 2;
    let yv = src[(y * width + x) * 2] as f32;
    let (u, v) = (src[pair + 1] as f32 - 128.0, src[pair + 3] as f32 - 128.0);
    let clamp = |f: f32| f.round().clamp(0.0, 255.0) as u8;
    [
        clamp(yv + 1.402 * v),
        clamp(yv - 0.344_136 * u - 0.714_136 * v),
        clamp(yv + 1.772 * u),
    ]
}

/// Bilinear taps for resizing `src` samples to `dst` with half-pixel centres (cv2 INTER_LINEAR).
fn taps(src: usize, dst: usize) -> Vec<Tap> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|d| {
            let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(src - 1);
            let i1 = (i0 + 1).min(src - 1);
            Tap {
                i0,
                i1,
                f: s - i0 as f32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(c: usize, h: usize, w: usize, range: [f32; 2]) -> InputSpec {
        InputSpec {
            name: "image".into(),
            batch: 1,
            channels: c,
            height: h,
            width: w,
            range,
            resize: "bilinear".into(),
        }
    }

    fn frame(w: u32, h: u32, format: PixelFormat, data: Vec<u8>) -> Frame {
        Frame {
            seq: 0,
            timestamp_ns: 0,
            width: w,
            height: h,
            format,
            data,
            truth: None,
            origin: "test".into(),
        }
    }

    #[test]
    fn same_size_grey_is_exact_scaling() {
        let mut p = Preprocessor::new(&spec(1, 2, 2, [-1.0, 1.0]), None);
        let mut out = vec![0.0; 4];
        p.run(
            &frame(2, 2, PixelFormat::Grey8, vec![0, 255, 51, 204]),
            &mut out,
        )
        .unwrap();
        for (a, b) in out.iter().zip([-1.0, 1.0, -0.6, 0.6]) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn rgb_to_grey_matches_pillow_luma() {
        assert_eq!(luma([255, 0, 0]), 76);
        assert_eq!(luma([0, 255, 0]), 150);
        assert_eq!(luma([0, 0, 255]), 29);
        assert_eq!(luma([255, 255, 255]), 255);
        let mut p = Preprocessor::new(&spec(1, 1, 1, [0.0, 255.0]), None);
        let mut out = vec![0.0];
        p.run(&frame(1, 1, PixelFormat::Rgb8, vec![10, 200, 30]), &mut out)
            .unwrap();
        assert_eq!(out[0], luma([10, 200, 30]) as f32);
    }

    #[test]
    fn downscale_by_two_averages_pairs() {
        // Half-pixel centres: a 2× downscale samples exactly between source pixels.
        let mut p = Preprocessor::new(&spec(1, 1, 2, [0.0, 255.0]), None);
        let mut out = vec![0.0; 2];
        p.run(
            &frame(
                4,
                2,
                PixelFormat::Grey8,
                vec![0, 100, 200, 50, 0, 100, 200, 50],
            ),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![50.0, 125.0]);
    }

    #[test]
    fn upscale_matches_cv2_inter_linear() {
        // cv2.resize(np.array([[0, 100]], np.uint8).astype(np.float32), (4, 1)) == [0, 25, 75, 100]
        let mut p = Preprocessor::new(&spec(1, 1, 4, [0.0, 255.0]), None);
        p.set_allow_upscale(true);
        let mut out = vec![0.0; 4];
        p.run(&frame(2, 1, PixelFormat::Grey8, vec![0, 100]), &mut out)
            .unwrap();
        assert_eq!(out, vec![0.0, 25.0, 75.0, 100.0]);
    }

    #[test]
    fn a_frame_smaller_than_the_model_is_refused_unless_upscaling_is_allowed() {
        let mut p = Preprocessor::new(&spec(1, 4, 4, [0.0, 1.0]), None);
        let mut out = vec![0.0; 16];
        let err = p
            .run(&frame(1, 1, PixelFormat::Grey8, vec![7]), &mut out)
            .unwrap_err();
        assert!(matches!(
            err,
            PreprocessError::TooSmall {
                width: 1,
                height: 1,
                model_width: 4,
                model_height: 4,
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("test") && text.contains("1×1") && text.contains("4×4"),
            "{text}"
        );
        // Smaller in one direction only is still an upscale.
        assert!(p
            .run(&frame(8, 2, PixelFormat::Grey8, vec![0; 16]), &mut out)
            .is_err());
        p.set_allow_upscale(true);
        p.run(&frame(1, 1, PixelFormat::Grey8, vec![255]), &mut out)
            .unwrap();
        assert_eq!(out, vec![1.0; 16]);
    }

    #[test]
    fn roi_crops_and_rgb_is_planar() {
        let mut p = Preprocessor::new(
            &spec(3, 1, 1, [0.0, 255.0]),
            Some(Roi {
                x: 1,
                y: 0,
                width: 1,
                height: 1,
            }),
        );
        let mut out = vec![0.0; 3];
        p.run(
            &frame(2, 1, PixelFormat::Rgb8, vec![1, 2, 3, 4, 5, 6]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![4.0, 5.0, 6.0]);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut p = Preprocessor::new(
            &spec(1, 2, 2, [0.0, 1.0]),
            Some(Roi {
                x: 1,
                y: 1,
                width: 2,
                height: 2,
            }),
        );
        let mut out = vec![0.0; 4];
        assert!(matches!(
            p.run(&frame(2, 2, PixelFormat::Grey8, vec![0; 4]), &mut out),
            Err(PreprocessError::Roi { .. })
        ));
        let mut p = Preprocessor::new(&spec(1, 2, 2, [0.0, 1.0]), None);
        assert!(matches!(
            p.run(&frame(2, 2, PixelFormat::Grey8, vec![0; 3]), &mut out),
            Err(PreprocessError::Size { .. })
        ));
        assert!(matches!(
            p.run(
                &frame(2, 2, PixelFormat::Mjpeg, vec![0xff, 0xd8, 0]),
                &mut out
            ),
            Err(PreprocessError::Decode { .. })
        ));
        assert!(matches!(
            p.run(&frame(0, 0, PixelFormat::Grey8, vec![]), &mut out),
            Err(PreprocessError::Empty(_))
        ));
    }

    #[test]
    fn native_keeps_the_roi_resolution() {
        let mut p = Preprocessor::new(
            &spec(3, 1, 1, [0.0, 255.0]),
            Some(Roi {
                x: 1,
                y: 0,
                width: 2,
                height: 1,
            }),
        );
        let mut out = Vec::new();
        let data = (1..=9).collect();
        let size = p
            .run_native(&frame(3, 1, PixelFormat::Rgb8, data), &mut out)
            .unwrap();
        assert_eq!(size, (2, 1));
        assert_eq!(out, vec![4.0, 7.0, 5.0, 8.0, 6.0, 9.0]);
    }

    #[test]
    fn yuyv_grey_uses_luma_bytes() {
        let mut p = Preprocessor::new(&spec(1, 1, 2, [0.0, 255.0]), None);
        let mut out = vec![0.0; 2];
        p.run(
            &frame(2, 1, PixelFormat::Yuyv, vec![10, 128, 200, 128]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![10.0, 200.0]);
    }
}
