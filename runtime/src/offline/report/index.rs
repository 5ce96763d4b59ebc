//! `index.md`: the headline metrics, the per-kind table and every figure with its caption, with
//! links relative to the report folder so a model card can embed it.

use std::path::Path;

use super::{pct, Figure};
use crate::offline::eval::EvalReport;

/// A metric to four places, or `n/a` when it could not be computed.
fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.4}"))
}

/// The text of `index.md` for `r` of `model`, listing `figures` and then the `skipped` ones.
pub(super) fn index_md(
    model: &Path,
    r: &EvalReport,
    figures: &[Figure],
    skipped: &[String],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation report\n");
    let _ = writeln!(
        s,
        "Model `{}` on `{}`: {} images scored ({} unreadable), threshold {:.5}. \
         Written by `diffad eval --report`; the numbers behind the figures are in \
         [figures.json](figures.json).\n",
        model.display(),
        r.dataset,
        r.images,
        r.failed,
        r.threshold
    );
    let _ = writeln!(
        s,
        "| image AUROC | pixel AUROC | PRO (FPR ≤ 30 %) | false rejects | escapes |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} |\n",
        opt(r.image_auroc),
        opt(r.pixel_auroc),
        opt(r.pro),
        pct(r.false_reject_rate),
        pct(r.escape_rate)
    );
    let _ = writeln!(s, "| kind | images | mean score | rejected |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for k in &r.kinds {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {} |",
            k.kind,
            k.n,
            k.mean_score,
            pct(k.rejected)
        );
    }
    let _ = writeln!(s, "\n## Figures\n");
    for f in figures {
        let _ = writeln!(s, "![{}]({})\n", f.file, f.file);
        let _ = writeln!(s, "[`{}`]({}): {}\n", f.file, f.file, f.caption);
    }
    for why in skipped {
        let _ = writeln!(s, "- {why}");
    }
    s
}
