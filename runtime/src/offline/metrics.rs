//! Detection metrics as the anomaly-detection literature computes them: AUROC and PRO.

/// Area under the ROC curve of `scores` against `labels` (true = anomalous).
///
/// Rank-based (Mann–Whitney U) with ties counted as half, which is what scikit-learn's
/// `roc_auc_score` returns. `None` when one class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of positive ranks, average rank within runs of ties.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

/// Per-region overlap integrated up to `max_fpr` and normalised to [0, 1] (MVTec-AD's PRO).
///
/// `maps` and `masks` hold one entry per image (same sizes); regions are 4-connected components
/// of each mask, as `scipy.ndimage.label` finds them. `None` without any defect region.
pub fn pro(maps: &[&[f32]], masks: &[&[bool]], width: usize, max_fpr: f64) -> Option<f64> {
    let mut region_size = Vec::new();
    let mut pixels: Vec<(f32, u32)> = Vec::new(); // (score, region id; 0 = normal pixel)
    for (map, mask) in maps.iter().zip(masks) {
        let labels = components(mask, width);
        let base = region_size.len() as u32;
        let n_regions = labels.iter().copied().max().unwrap_or(0);
        region_size.extend(std::iter::repeat_n(0usize, n_regions as usize));
        for (&s, &l) in map.iter().zip(&labels) {
            let id = if l == 0 { 0 } else { base + l };
            if id > 0 {
                region_size[(id - 1) as usize] += 1;
            }
            pixels.push((s, id));
        }
    }
    let n_regions = region_size.len();
    let normals = pixels.iter().filter(|p| p.1 == 0).count();
    if n_regions == 0 || normals == 0 {
        return None;
    }
    pixels.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    // Sweep the threshold down through every distinct score, tracing (fpr, pro).
    let (mut fp, mut overlap_sum) = (0usize, 0.0f64);
    let mut curve = vec![(0.0f64, 0.0f64)];
    let mut i = 0;
    while i < pixels.len() {
        let s = pixels[i].0;
        while i < pixels.len() && pixels[i].0 == s {
            match pixels[i].1 {
                0 => fp += 1,
                id => overlap_sum += 1.0 / region_size[(id - 1) as usize] as f64,
            }
            i += 1;
        }
        curve.push((fp as f64 / normals as f64, overlap_sum / n_regions as f64));
    }
    let mut area = 0.0;
    for w in curve.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x0 >= max_fpr {
            break;
        }
        if x1 > max_fpr {
            let y = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0);
            area += (max_fpr - x0) * (y0 + y) / 2.0;
            break;
        }
        area += (x1 - x0) * (y0 + y1) / 2.0;
    }
    Some(area / max_fpr)
}

/// 4-connected component labels (1..=n, 0 = background).
fn components(mask: &[bool], width: usize) -> Vec<u32> {
    let height = mask.len() / width;
    let mut label = vec![0u32; mask.len()];
    let mut next = 0;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % width, p / width);
            let mut visit = |q: usize| {
                if mask[q] && label[q] == 0 {
                    label[q] = next;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < width {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - width);
            }
            if y + 1 < height {
                visit(p + width);
            }
        }
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_known_values() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        // sklearn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.75
        assert_eq!(
            auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        // ties count half: roc_auc_score([0,1],[0.5,0.5]) == 0.5
        assert_eq!(auroc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auroc(&[0.5, 0.5], &[true, true]), None);
    }

    #[test]
    fn pro_perfect_and_components() {
        // One region of 2 pixels, perfectly separated: PRO reaches 1 at FPR 0.
        let map = [0.9, 0.8, 0.1, 0.0];
        let mask = [true, true, false, false];
        assert!((pro(&[&map], &[&mask], 2, 0.3).unwrap() - 1.0).abs() < 1e-9);
        // Two diagonal pixels are two 4-connected regions.
        assert_eq!(components(&[true, false, false, true], 2), vec![1, 0, 0, 2]);
        // Inverted scores: regions only found after every normal pixel → PRO 0 below FPR 0.3.
        let inv = [0.0, 0.1, 0.8, 0.9];
        assert_eq!(pro(&[&inv], &[&mask], 2, 0.3), Some(0.0));
    }
}
