//! `kind_<name>.png`: per defect kind, the best caught and worst missed tiles with their
//! heatmaps, and a key to the map's colours and contours; `good_highest.png`: the good tiles
//! that scored highest, the false rejects first.

use std::path::Path;

use anyhow::{anyhow, Result};
use image::{imageops, Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{draw_err, save, DEFECT, FONT};
use crate::offline::eval::Scored;
use crate::sinks::heatmap;
use crate::sources::imagefile;

/// Tiles per row in `kind_<name>.png`.
pub const GRID_COLS: usize = 6;
/// Side of one tile in `kind_<name>.png`.
const CELL: u32 = 192;
const GAP: u32 = 14;
const MARGIN: u32 = 24;
const TITLE_H: u32 = 56;
const ROW_HEAD_H: u32 = 34;
const LABEL_H: u32 = 46;
const LEGEND_H: u32 = 56;
/// Size of every `kind_<name>.png`.
pub const KIND_SIZE: (u32, u32) = (
    2 * MARGIN + GRID_COLS as u32 * CELL + (GRID_COLS as u32 - 1) * GAP,
    TITLE_H + 2 * (ROW_HEAD_H + CELL + LABEL_H) + LEGEND_H + MARGIN,
);

const CAUGHT: RGBColor = RGBColor(0, 128, 60);
const TRUTH: Rgb<u8> = Rgb([255, 0, 255]);

/// The figure being drawn.
type Root<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The best caught (highest scores at or above `thr`) and worst missed (lowest scores, so the
/// escapes first) defective tiles of `kind`; no tile in both. With few tiles the two rows share
/// them: the first row takes at most half (rounded up) unless there are more than two rows' worth.
pub(super) fn pick<'a>(
    scored: &'a [Scored],
    kind: &str,
    thr: f32,
) -> (Vec<&'a Scored>, Vec<&'a Scored>) {
    let mut of_kind: Vec<&Scored> = scored.iter().filter(|s| s.kind == kind).collect();
    of_kind.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.image.cmp(&b.image)));
    let n = of_kind.len();
    let caught = of_kind.iter().filter(|s| s.score >= thr).count();
    let n_best = GRID_COLS
        .min(caught)
        .min(n.saturating_sub(GRID_COLS).max(n.div_ceil(2)));
    let best = of_kind[..n_best].to_vec();
    let worst = of_kind[n_best..]
        .iter()
        .rev()
        .take(GRID_COLS)
        .copied()
        .collect();
    (best, worst)
}

/// The highest-scoring good tiles, descending (so the false rejects first), in two rows of at
/// most `GRID_COLS`.
pub(super) fn pick_good(scored: &[Scored]) -> (Vec<&Scored>, Vec<&Scored>) {
    let mut good: Vec<&Scored> = scored.iter().filter(|s| !s.defective).collect();
    good.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.image.cmp(&b.image)));
    good.truncate(2 * GRID_COLS);
    let second = good.split_off(good.len().min(GRID_COLS));
    (good, second)
}

/// What a panel shows: one defect kind's tiles, or the good tiles.
pub(super) enum Panel<'a> {
    /// A defect kind with `n` tiles, `escaped` of them below the threshold.
    Defect {
        kind: &'a str,
        n: usize,
        escaped: usize,
    },
    /// The good tiles: `n` of them, `rejected` at or above the threshold.
    Good { n: usize, rejected: usize },
}

impl Panel<'_> {
    fn title(&self, thr: f32) -> String {
        match *self {
            Panel::Defect { kind, n, escaped } => format!(
                "Defect kind \u{201c}{kind}\u{201d}: {n} tiles, {} caught, {escaped} escaped at threshold {thr:.4}",
                n - escaped
            ),
            Panel::Good { n, rejected } => format!(
                "Good tiles: {n}, {rejected} rejected at threshold {thr:.4}; the highest-scoring first"
            ),
        }
    }

    fn headings(&self, first: &[&Scored], second: &[&Scored]) -> [String; 2] {
        match *self {
            Panel::Defect { escaped, .. } => row_headings(first, second, escaped),
            Panel::Good { rejected, .. } => [
                if rejected > 0 {
                    format!(
                        "The highest-scoring good tiles ({} shown; {rejected} at or above the threshold: false rejects)",
                        first.len()
                    )
                } else {
                    format!(
                        "The highest-scoring good tiles: none rejected, closest calls first ({} shown)",
                        first.len()
                    )
                },
                format!("The next highest ({} shown)", second.len()),
            ],
        }
    }

    fn name(&self) -> String {
        match *self {
            Panel::Defect { kind, .. } => format!("kind_{kind}.png"),
            Panel::Good { .. } => "good_highest.png".into(),
        }
    }

    fn good(&self) -> bool {
        matches!(self, Panel::Good { .. })
    }
}

/// The heatmap overlay of one scored tile, fitted into a `CELL` square, with the ground-truth
/// outline drawn over it.
fn cell_image(s: &Scored, thr: f32) -> Result<RgbImage> {
    let frame = imagefile::load(&s.image)?;
    let over = heatmap::overlay(&frame, &s.map, s.map_width, s.map_height, thr)
        .map_err(|e| anyhow!("{}: {e}", s.image.display()))?;
    let (w, h) = over.dimensions();
    let scale = CELL as f64 / w.max(h) as f64;
    let (cw, ch) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let filter = if scale >= 1.0 {
        imageops::FilterType::Nearest
    } else {
        imageops::FilterType::Triangle
    };
    let mut img = imageops::resize(&over, cw, ch, filter);
    let (mw, mh) = (s.map_width as usize, s.map_height as usize);
    let truth = |x: u32, y: u32| -> bool {
        s.mask[(y as usize * mh / ch as usize) * mw + x as usize * mw / cw as usize]
    };
    for y in 0..ch {
        for x in 0..cw {
            if truth(x, y)
                && [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)]
                    .iter()
                    .any(|(dx, dy)| {
                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                        nx < 0
                            || ny < 0
                            || nx as u32 >= cw
                            || ny as u32 >= ch
                            || !truth(nx as u32, ny as u32)
                    })
            {
                img.put_pixel(x, y, TRUTH);
            }
        }
    }
    Ok(img)
}

/// Draw a panel into `dest`: the title, the two rows of tiles and the colour key.
pub(super) fn draw_kind(
    dest: &Path,
    panel: &Panel,
    best: &[&Scored],
    worst: &[&Scored],
    thr: f32,
) -> Result<()> {
    let (w, h) = KIND_SIZE;
    let mut cells = Vec::new();
    for s in best.iter().chain(worst) {
        cells.push(cell_image(s, thr)?);
    }
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let what = panel.name();
        let e = draw_err(&what);
        let root: Root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let title = (FONT, 26).into_font().style(FontStyle::Bold).color(&BLACK);
        root.draw(&Text::new(panel.title(thr), (MARGIN as i32, 14), title))
            .map_err(&e)?;
        let mut next = cells.into_iter();
        for (r, (tiles, heading)) in [best, worst]
            .into_iter()
            .zip(panel.headings(best, worst))
            .enumerate()
        {
            let y0 = (TITLE_H + r as u32 * (ROW_HEAD_H + CELL + LABEL_H)) as i32;
            let row = Row {
                y0,
                heading,
                good: panel.good(),
            };
            draw_row(&root, &what, row, tiles, &mut next, thr)?;
        }
        let ky = (TITLE_H + 2 * (ROW_HEAD_H + CELL + LABEL_H)) as i32 + 8;
        draw_scale_key(&root, &what, ky, thr)?;
        draw_contour_key(&root, &what, ky)?;
        root.present().map_err(&e)?;
    }
    save(buf, (w, h), dest)
}

/// The grey used for file names, empty slots and the key.
fn small_font() -> TextStyle<'static> {
    (FONT, 14).into_font().color(&RGBColor(90, 90, 90))
}

/// The headings of the best-caught and worst-missed rows.
fn row_headings(best: &[&Scored], worst: &[&Scored], escaped: usize) -> [String; 2] {
    [
        format!(
            "Best caught: the highest-scoring tiles at or above the threshold ({} shown)",
            best.len()
        ),
        if escaped > 0 {
            format!(
                "Worst missed: the lowest-scoring tiles ({} shown; {escaped} escaped below the threshold)",
                worst.len()
            )
        } else {
            format!(
                "Worst missed: none escaped; the lowest-scoring tiles, closest calls first ({} shown)",
                worst.len()
            )
        },
    ]
}

/// Where a row goes, its heading, and whether its tiles are good ones.
struct Row {
    y0: i32,
    heading: String,
    good: bool,
}

/// One row: its heading, then `GRID_COLS` slots, each a tile from `images` or empty.
fn draw_row(
    root: &Root,
    what: &str,
    Row { y0, heading, good }: Row,
    tiles: &[&Scored],
    images: &mut impl Iterator<Item = RgbImage>,
    thr: f32,
) -> Result<()> {
    let e = draw_err(what);
    let head = (FONT, 19).into_font().color(&BLACK);
    root.draw(&Text::new(heading, (MARGIN as i32, y0 + 6), head))
        .map_err(&e)?;
    let ty = y0 + ROW_HEAD_H as i32;
    for c in 0..GRID_COLS {
        let x = (MARGIN + c as u32 * (CELL + GAP)) as i32;
        let frame = [(x - 1, ty - 1), (x + CELL as i32, ty + CELL as i32)];
        let Some(s) = tiles.get(c) else {
            root.draw(&Rectangle::new(
                frame,
                RGBColor(225, 225, 225).stroke_width(1),
            ))
            .map_err(&e)?;
            root.draw(&Text::new(
                "no more tiles",
                (x + 50, ty + CELL as i32 / 2 - 8),
                small_font(),
            ))
            .map_err(&e)?;
            continue;
        };
        let img = images.next().expect("one image per tile");
        draw_tile(root, what, (x, ty), (s, good), img, thr)?;
    }
    Ok(())
}

/// One tile at `(x, ty)`: its image, a frame coloured by whether the verdict is right (a good
/// tile's pass, a defective one's reject), its score and file name.
fn draw_tile(
    root: &Root,
    what: &str,
    (x, ty): (i32, i32),
    (s, good): (&Scored, bool),
    img: RgbImage,
    thr: f32,
) -> Result<()> {
    let e = draw_err(what);
    let frame = [(x - 1, ty - 1), (x + CELL as i32, ty + CELL as i32)];
    let (cw, ch) = img.dimensions();
    let el = BitMapElement::<(i32, i32)>::with_owned_buffer((x, ty), (cw, ch), img.into_raw())
        .expect("buffer of the tile's size");
    root.draw(&el).map_err(&e)?;
    let rejected = s.score >= thr;
    let right = rejected != good;
    let color = if right { CAUGHT } else { DEFECT };
    root.draw(&Rectangle::new(frame, color.stroke_width(2)))
        .map_err(&e)?;
    let verdict = match (good, rejected) {
        (false, true) => "reject: caught",
        (false, false) => "pass: ESCAPED",
        (true, true) => "reject: FALSE REJECT",
        (true, false) => "pass",
    };
    root.draw(&Text::new(
        format!("{:.4}  {verdict}", s.score),
        (x, ty + CELL as i32 + 6),
        (FONT, 16).into_font().style(FontStyle::Bold).color(&color),
    ))
    .map_err(&e)?;
    let file = s
        .image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    root.draw(&Text::new(file, (x, ty + CELL as i32 + 26), small_font()))
        .map_err(&e)?;
    Ok(())
}

/// Left of the key at `ky`: the map's turbo scale from 0 to 1 with the threshold marked.
fn draw_scale_key(root: &Root, what: &str, ky: i32, thr: f32) -> Result<()> {
    let e = draw_err(what);
    let small = small_font();
    let (kx, kw) = (MARGIN as i32 + 120, 360i32);
    root.draw(&Text::new(
        "anomaly map",
        (MARGIN as i32, ky + 2),
        small.clone(),
    ))
    .map_err(&e)?;
    for i in 0..kw {
        let c = heatmap::turbo(i as f32 / (kw - 1) as f32);
        root.draw(&Rectangle::new(
            [(kx + i, ky), (kx + i + 1, ky + 18)],
            RGBColor(c[0], c[1], c[2]).filled(),
        ))
        .map_err(&e)?;
    }
    let tx = kx + (thr.clamp(0.0, 1.0) * (kw - 1) as f32) as i32;
    root.draw(&PathElement::new(
        vec![(tx, ky - 4), (tx, ky + 22)],
        BLACK.stroke_width(2),
    ))
    .map_err(&e)?;
    for (v, x) in [("0", kx - 16), ("1", kx + kw + 6)] {
        root.draw(&Text::new(v, (x, ky + 2), small.clone()))
            .map_err(&e)?;
    }
    let label = format!("threshold {thr:.3}");
    let lw = root.estimate_text_size(&label, &small).map_err(&e)?.0 as i32;
    root.draw(&Text::new(
        label,
        ((tx - lw / 2).clamp(kx, kx + kw - lw), ky + 24),
        small,
    ))
    .map_err(&e)?;
    Ok(())
}

/// Right of the key at `ky`: swatches for the two contours drawn on the tiles.
fn draw_contour_key(root: &Root, what: &str, ky: i32) -> Result<()> {
    let e = draw_err(what);
    let small = small_font();
    let (kx, kw) = (MARGIN as i32 + 120, 360i32);
    let lx = kx + kw + 50;
    root.draw(&Rectangle::new(
        [(lx, ky + 2), (lx + 22, ky + 16)],
        ShapeStyle::from(&WHITE).filled(),
    ))
    .map_err(&e)?;
    root.draw(&Rectangle::new(
        [(lx, ky + 2), (lx + 22, ky + 16)],
        RGBColor(150, 150, 150).stroke_width(1),
    ))
    .map_err(&e)?;
    root.draw(&Text::new(
        "map ≥ threshold (contour)",
        (lx + 30, ky + 2),
        small.clone(),
    ))
    .map_err(&e)?;
    let lx = lx + 250;
    root.draw(&Rectangle::new(
        [(lx, ky + 2), (lx + 22, ky + 16)],
        RGBColor(TRUTH.0[0], TRUTH.0[1], TRUTH.0[2]).filled(),
    ))
    .map_err(&e)?;
    root.draw(&Text::new(
        "ground-truth defect (contour)",
        (lx + 30, ky + 2),
        small,
    ))
    .map_err(&e)?;
    Ok(())
}
