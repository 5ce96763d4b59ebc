//! Camera pixel formats converted once, into a reused buffer, to the grey or RGB frames the
//! preprocess stage takes.

use crate::frame::{luma, PixelFormat};

/// A camera pixel layout (GenICam SFNC names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 8-bit grey.
    Mono8,
    /// 10, 12 or 16 significant bits in a little-endian u16 per pixel (unpacked).
    Mono16 {
        /// Significant bits (10, 12 or 16).
        bits: u8,
    },
    /// 8-bit Bayer mosaic; `[0]` is the colour at (0, 0), `[1]` at (1, 0), `[2]` at (0, 1),
    /// `[3]` at (1, 1) (0 = red, 1 = green, 2 = blue).
    Bayer8([u8; 4]),
    /// 8-bit RGB, interleaved.
    Rgb8,
    /// 8-bit BGR, interleaved.
    Bgr8,
}

impl Layout {
    /// The layout of a GenICam `PixelFormat` name.
    pub fn from_genicam(name: &str) -> Option<Self> {
        Some(match name {
            "Mono8" => Self::Mono8,
            "Mono10" => Self::Mono16 { bits: 10 },
            "Mono12" => Self::Mono16 { bits: 12 },
            "Mono16" => Self::Mono16 { bits: 16 },
            "BayerRG8" => Self::Bayer8([0, 1, 1, 2]),
            "BayerGR8" => Self::Bayer8([1, 0, 2, 1]),
            "BayerGB8" => Self::Bayer8([1, 2, 0, 1]),
            "BayerBG8" => Self::Bayer8([2, 1, 1, 0]),
            "RGB8" | "RGB8Packed" => Self::Rgb8,
            "BGR8" | "BGR8Packed" => Self::Bgr8,
            _ => return None,
        })
    }

    /// Bytes of a `w`×`h` image.
    pub fn bytes(self, w: usize, h: usize) -> usize {
        w * h
            * match self {
                Self::Mono8 | Self::Bayer8(_) => 1,
                Self::Mono16 { .. } => 2,
                Self::Rgb8 | Self::Bgr8 => 3,
            }
    }
}

/// Convert a `w`×`h` image in `layout` into `out` (cleared, capacity kept) as grey, or as RGB
/// when `rgb` and the camera gives colour. Returns the frame format written.
pub fn convert(
    layout: Layout,
    src: &[u8],
    w: usize,
    h: usize,
    rgb: bool,
    out: &mut Vec<u8>,
) -> Result<PixelFormat, String> {
    let need = layout.bytes(w, h);
    if src.len() < need {
        return Err(format!(
            "{w}×{h} {layout:?} needs {need} bytes, the buffer holds {}",
            src.len()
        ));
    }
    let src = &src[..need];
    out.clear();
    let colour = rgb && matches!(layout, Layout::Bayer8(_) | Layout::Rgb8 | Layout::Bgr8);
    out.resize(w * h * if colour { 3 } else { 1 }, 0);
    match layout {
        Layout::Mono8 => out.copy_from_slice(src),
        Layout::Mono16 { bits } => {
            let shift = u32::from(bits - 8);
            for (o, p) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = (u16::from_le_bytes([p[0], p[1]]) >> shift).min(255) as u8;
            }
        }
        Layout::Rgb8 if colour => out.copy_from_slice(src),
        Layout::Bgr8 if colour => {
            for (o, p) in out.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                o.copy_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        Layout::Rgb8 => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(3)) {
                *o = luma([p[0], p[1], p[2]]);
            }
        }
        Layout::Bgr8 => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(3)) {
                *o = luma([p[2], p[1], p[0]]);
            }
        }
        Layout::Bayer8(cfa) => demosaic(cfa, src, w, h, colour, out),
    }
    Ok(if colour {
        PixelFormat::Rgb8
    } else {
        PixelFormat::Grey8
    })
}

/// Bilinear demosaic (edges mirrored so that each neighbour keeps its colour), written as RGB
/// or as 601 luma.
fn demosaic(cfa: [u8; 4], src: &[u8], w: usize, h: usize, colour: bool, out: &mut [u8]) {
    if w < 2 || h < 2 {
        // No neighbourhood to interpolate from: each site's own value as grey.
        for (i, &v) in src.iter().enumerate() {
            if colour {
                out[i * 3..i * 3 + 3].copy_from_slice(&[v, v, v]);
            } else {
                out[i] = v;
            }
        }
        return;
    }
    let mirror = |i: isize, n: usize| -> usize {
        if i < 0 {
            1
        } else if i as usize >= n {
            n - 2
        } else {
            i as usize
        }
    };
    for y in 0..h {
        let (ym, yp) = (mirror(y as isize - 1, h), mirror(y as isize + 1, h));
        let (row, up, down) = (&src[y * w..], &src[ym * w..], &src[yp * w..]);
        for x in 0..w {
            let (xm, xp) = (mirror(x as isize - 1, w), mirror(x as isize + 1, w));
            let c = cfa[(y & 1) * 2 + (x & 1)];
            let v = u32::from(row[x]);
            let cross = (u32::from(row[xm])
                + u32::from(row[xp])
                + u32::from(up[x])
                + u32::from(down[x])
                + 2)
                / 4;
            let diag = (u32::from(up[xm])
                + u32::from(up[xp])
                + u32::from(down[xm])
                + u32::from(down[xp])
                + 2)
                / 4;
            let horiz = (u32::from(row[xm]) + u32::from(row[xp])).div_ceil(2);
            let vert = (u32::from(up[x]) + u32::from(down[x])).div_ceil(2);
            let [r, g, b] = match c {
                0 => [v, cross, diag],
                2 => [diag, cross, v],
                // Green: the colour of the horizontal neighbours is that of (x ^ 1, y).
                _ if cfa[(y & 1) * 2 + ((x & 1) ^ 1)] == 0 => [horiz, v, vert],
                _ => [vert, v, horiz],
            };
            let px = [r as u8, g as u8, b as u8];
            if colour {
                out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&px);
            } else {
                out[y * w + x] = luma(px);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_genicam_name_the_config_accepts_has_a_layout() {
        for name in crate::sources::camera::config::GENICAM_PIXEL_FORMATS {
            assert!(Layout::from_genicam(name).is_some(), "{name}");
        }
        assert_eq!(
            Layout::from_genicam("Mono10p"),
            None,
            "packed formats are not taken"
        );
    }

    #[test]
    fn mono_high_bit_depths_keep_their_top_eight_bits() {
        let mut out = Vec::new();
        let px = |v: u16| v.to_le_bytes();
        let src: Vec<u8> = [px(1023), px(512), px(4)].concat();
        let f = convert(Layout::Mono16 { bits: 10 }, &src, 3, 1, false, &mut out).unwrap();
        assert_eq!(
            (f, out.as_slice()),
            (PixelFormat::Grey8, &[255u8, 128, 1][..])
        );
        let src: Vec<u8> = [px(4095), px(16)].concat();
        convert(Layout::Mono16 { bits: 12 }, &src, 2, 1, false, &mut out).unwrap();
        assert_eq!(out, [255, 1]);
        // A 10-bit camera that sets a stray high bit saturates, it does not wrap.
        convert(
            Layout::Mono16 { bits: 10 },
            &px(0x0800),
            1,
            1,
            false,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [255]);
    }

    #[test]
    fn a_short_buffer_is_an_error_naming_the_sizes() {
        let e = convert(Layout::Mono8, &[0; 5], 3, 2, false, &mut Vec::new()).unwrap_err();
        assert!(e.contains("needs 6 bytes") && e.contains("holds 5"), "{e}");
    }

    #[test]
    fn bgr_is_swapped_and_colour_becomes_luma_for_a_grey_model() {
        let mut out = Vec::new();
        assert_eq!(
            convert(Layout::Bgr8, &[1, 2, 3], 1, 1, true, &mut out).unwrap(),
            PixelFormat::Rgb8
        );
        assert_eq!(out, [3, 2, 1]);
        convert(Layout::Rgb8, &[10, 200, 30], 1, 1, false, &mut out).unwrap();
        assert_eq!(out, [luma([10, 200, 30])]);
    }

    /// A flat colour photographed through each mosaic demosaics back to that colour.
    #[test]
    fn each_bayer_pattern_restores_a_flat_colour() {
        let colour = [200u8, 120, 40];
        for name in ["BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8"] {
            let Some(Layout::Bayer8(cfa)) = Layout::from_genicam(name) else {
                panic!("{name}")
            };
            let (w, h) = (6, 4);
            let src: Vec<u8> = (0..w * h)
                .map(|i| colour[cfa[((i / w) & 1) * 2 + ((i % w) & 1)] as usize])
                .collect();
            let mut out = Vec::new();
            convert(Layout::Bayer8(cfa), &src, w, h, true, &mut out).unwrap();
            for px in out.chunks_exact(3) {
                assert_eq!(px, colour, "{name}");
            }
            convert(Layout::Bayer8(cfa), &src, w, h, false, &mut out).unwrap();
            assert!(out.iter().all(|&g| g == luma(colour)), "{name}");
        }
    }

    #[test]
    fn the_output_buffer_is_reused() {
        let mut out = Vec::with_capacity(64);
        let p = out.as_ptr();
        convert(Layout::Mono8, &[1; 64], 8, 8, false, &mut out).unwrap();
        convert(Layout::Mono8, &[2; 64], 8, 8, false, &mut out).unwrap();
        assert_eq!(out.as_ptr(), p, "no new allocation for a same-size frame");
    }
}
