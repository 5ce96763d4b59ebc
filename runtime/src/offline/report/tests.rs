use super::*;
use crate::offline::metrics::auroc;

#[test]
fn roc_area_is_the_metrics_auroc_with_ties() {
    let mut rng = crate::sources::camera::sim::Rng::new(3);
    for n in [2usize, 7, 50, 400] {
        // Coarse scores make many ties across the classes.
        let scores: Vec<f32> = (0..n).map(|_| (rng.int(0, 20) as f32) / 20.0).collect();
        let mut labels: Vec<bool> = (0..n).map(|_| rng.f64() < 0.4).collect();
        labels[0] = true;
        labels[1] = false;
        let roc = roc_points(&scores, &labels).unwrap();
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        assert!(roc.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
        let a = auroc(&scores, &labels).unwrap();
        assert!((area(&roc) - a).abs() < 1e-12, "{} vs {a}", area(&roc));
    }
    assert!(roc_points(&[0.1, 0.2], &[true, true]).is_none());
}

#[test]
fn thinning_keeps_the_ends_and_the_shape() {
    let pts: Vec<(f64, f64)> = (0..=10_000)
        .map(|i| {
            let x = i as f64 / 10_000.0;
            (x, x.sqrt())
        })
        .collect();
    let t = thin(&pts, 1e-3);
    assert!(t.len() < 2100, "{}", t.len());
    assert_eq!(t.first(), pts.first());
    assert_eq!(t.last(), pts.last());
    assert!((area(&t) - area(&pts)).abs() < 1e-3);
}

#[test]
fn histogram_counts_every_value_once() {
    let v = [0.0f32, 0.1, 0.5, 0.99, 1.0, -5.0, 7.0];
    let h = histogram(&v, 0.0, 1.0, 10);
    assert_eq!(h.iter().sum::<usize>(), v.len());
    assert_eq!(h[0], 2); // 0.0 and the clamped -5.0
    assert_eq!(h[9], 3); // 0.99, 1.0 and the clamped 7.0
    assert_eq!(file_stem("a b/c"), "a_b_c");
}

fn scored(kind: &str, score: f32) -> Scored {
    Scored {
        image: PathBuf::from(format!("{kind}-{score}.png")),
        kind: kind.into(),
        defective: kind != "good",
        score,
        map: vec![0.0; 4],
        mask: vec![false; 4],
        map_width: 2,
        map_height: 2,
    }
}

#[test]
fn best_and_worst_rows_share_few_tiles_and_show_escapes() {
    let thr = 0.5;
    let names = |v: &[&Scored]| v.iter().map(|s| s.score).collect::<Vec<_>>();
    // Four caught: two per row, the closest call first in the second.
    let four: Vec<Scored> = [0.9, 0.6, 0.8, 0.7].map(|v| scored("hole", v)).to_vec();
    let (b, w) = pick(&four, "hole", thr);
    assert_eq!((names(&b), names(&w)), (vec![0.9, 0.8], vec![0.6, 0.7]));
    // Escapes always land in the second row, lowest first; the caught one leads the first.
    let esc: Vec<Scored> = [0.1, 0.6, 0.3, 0.2].map(|v| scored("hole", v)).to_vec();
    let (b, w) = pick(&esc, "hole", thr);
    assert_eq!((names(&b), names(&w)), (vec![0.6], vec![0.1, 0.2, 0.3]));
    // Many: six of the best and six of the worst, no tile twice.
    let many: Vec<Scored> = (0..20).map(|i| scored("hole", i as f32 / 20.0)).collect();
    let (b, w) = pick(&many, "hole", thr);
    assert_eq!(names(&b), vec![0.95, 0.9, 0.85, 0.8, 0.75, 0.7]);
    assert_eq!(names(&w), vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.25]);
    assert!(pick(&many, "scratch", thr).0.is_empty());
}

#[test]
fn non_finite_scores_and_one_class_are_errors_naming_the_thing() {
    let dir = tempfile::tempdir().unwrap();
    let report = |images: &[Scored]| EvalReport {
        dataset: "/data/brick".into(),
        threshold: 0.5,
        images: images.len(),
        failed: 0,
        image_auroc: auroc(
            &images.iter().map(|s| s.score).collect::<Vec<_>>(),
            &images.iter().map(|s| s.defective).collect::<Vec<_>>(),
        ),
        pixel_auroc: None,
        pro: None,
        false_reject_rate: 0.0,
        escape_rate: 0.0,
        kinds: vec![],
        images_per_s: 1.0,
        sweep: None,
    };
    let nan = vec![scored("good", 0.1), scored("hole", f32::NAN)];
    let err = write(dir.path(), Path::new("m.onnx"), &report(&nan), &nan).unwrap_err();
    assert!(err.to_string().contains("hole-NaN.png"), "{err}");
    let mut bad_map = vec![scored("good", 0.1), scored("hole", 0.9)];
    bad_map[1].map[2] = f32::INFINITY;
    let err = write(dir.path(), Path::new("m.onnx"), &report(&bad_map), &bad_map).unwrap_err();
    assert!(
        err.to_string().contains("anomaly map of hole-0.9.png"),
        "{err}"
    );
    let only_good = vec![scored("good", 0.1), scored("good", 0.2)];
    let err = write(
        dir.path(),
        Path::new("m.onnx"),
        &report(&only_good),
        &only_good,
    )
    .unwrap_err();
    assert!(err.to_string().contains("2 good and 0 defective"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unwritable_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = prepare(&file.join("report")).unwrap_err();
    assert!(format!("{err:#}").contains("plain-file/report"), "{err:#}");
}
