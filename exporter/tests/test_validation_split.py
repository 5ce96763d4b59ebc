"""make-tiles: the train / validation / test split, the validation synthesis, the test pin."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from exporter import synth, valsynth
from exporter import tiles as tiles_mod
from exporter.__main__ import main
from exporter.tiles import (
    DEFECTS,
    REGIONS,
    TEXTURES,
    TILE,
    VAL_DEFECTS,
    VAL_GOOD,
    VAL_PER_DEFECT,
    VAL_TEST_GOOD,
    VARIANTS,
    photo,
)

# sha256 of the decoded pixels of every texture's test/ and ground_truth/ trees and of
# photos/, as make-tiles --seed 0 wrote them before the validation split existed (commit
# e03feb7). The committed model cards are evaluated on exactly these images.
TEST_TREE_SHA256 = "3426865b812783ea4dc84325e91e9c9f4b2716f488de586658ffd0406d6d66b9"


def _png(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im)


def _test_tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    files = [p for t in TEXTURES for sub in ("test", "ground_truth")
             for p in sorted((root / t / sub).rglob("*.png"))]
    files += sorted((root / "photos").glob("*.png"))
    for p in files:
        a = _png(p)
        h.update(p.relative_to(root).as_posix().encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _manifest(root: Path, tex: str) -> dict:
    return json.loads((root / tex / "tiles.json").read_text())


def _clean(img: np.ndarray, e: dict) -> np.ndarray:
    t = img[e["y"] : e["y"] + TILE, e["x"] : e["x"] + TILE]
    return np.ascontiguousarray(tiles_mod._variants(t)[VARIANTS.index(e["variant"])])


def _split(rel: str) -> str:
    return "validation" if rel.startswith("validation/") else rel.split("/")[0]


def test_test_split_is_unchanged(tiles: Path) -> None:
    assert _test_tree_hash(tiles) == TEST_TREE_SHA256


def test_regions_are_disjoint_and_every_tile_lies_in_its_own(tiles: Path) -> None:
    boxes = list(REGIONS.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:  # half-open boxes: disjoint iff separated on some axis
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for tex in TEXTURES:
        man = _manifest(tiles, tex)
        assert {k: tuple(v) for k, v in man["regions"].items()} == REGIONS
        on_disk = {p.relative_to(tiles / tex).as_posix()
                   for p in (tiles / tex).rglob("*.png") if "ground_truth" not in p.parts}
        assert set(man["tiles"]) == on_disk
        img = photo(tex)
        for rel, e in man["tiles"].items():
            x0, y0, x1, y1 = REGIONS[_split(rel)]
            assert x0 <= e["x"] and e["x"] + TILE <= x1, rel
            assert y0 <= e["y"] and e["y"] + TILE <= y1, rel
            if rel.split("/")[-2] == "good":  # the manifest tells the truth about the crop
                assert np.array_equal(_png(tiles / tex / rel), _clean(img, e)), rel


def test_validation_offsets_are_distinct(tiles: Path) -> None:
    for tex in TEXTURES:
        man = _manifest(tiles, tex)["tiles"]
        cal = {(e["x"], e["y"]) for r, e in man.items() if r.startswith("validation/good/")}
        held = {(e["x"], e["y"]) for r, e in man.items()
                if r.startswith("validation/test/good/")}
        defects = [(e["x"], e["y"]) for r, e in man.items() if r.startswith("validation/test/")
                   and not r.startswith("validation/test/good/")]
        assert len(cal) == VAL_GOOD and len(held) == VAL_TEST_GOOD  # no repeated offset
        assert not cal & held  # calibrate on one, measure the false-reject rate on the other
        assert len(set(defects)) == len(defects) and not set(defects) & (cal | held)


def test_counts(tiles: Path) -> None:
    for tex in TEXTURES:
        def n(rel: str, root: Path = tiles / tex) -> int:
            return len(list((root / rel).glob("*.png")))

        assert n("train/good") == 7 * 9  # y 0..192, x 0..256, stride 32
        assert n("validation/good") == VAL_GOOD
        assert n("validation/test/good") == VAL_TEST_GOOD
        kinds = sorted(d.name for d in (tiles / tex / "validation" / "test").iterdir())
        assert kinds == sorted((*VAL_DEFECTS, "good"))
        for kind in VAL_DEFECTS:
            assert n(f"validation/test/{kind}") == VAL_PER_DEFECT
            assert n(f"validation/ground_truth/{kind}") == VAL_PER_DEFECT
        counts = _manifest(tiles, tex)["counts"]
        assert counts["validation/good"] == VAL_GOOD and counts["train/good"] == 63


def test_validation_masks_mark_the_changed_pixels(tiles: Path) -> None:
    for tex in TEXTURES:
        man = _manifest(tiles, tex)["tiles"]
        img = photo(tex)
        for kind in VAL_DEFECTS:
            for i in range(VAL_PER_DEFECT):
                rel = f"validation/test/{kind}/{i:03d}.png"
                d = _png(tiles / tex / rel)
                m = _png(tiles / tex / "validation" / "ground_truth" / kind / f"{i:03d}_mask.png")
                assert m.shape == (TILE, TILE) and set(np.unique(m)) <= {0, 255}
                m = m > 0
                assert m.sum() >= valsynth.MIN_AREA, rel
                diff = np.abs(d.astype(int) - _clean(img, man[rel]).astype(int))
                # marked <=> changed by at least CHANGE grey levels
                assert np.array_equal(m, diff >= valsynth.CHANGE), rel


def test_second_synthesis_differs_from_training_and_evaluation(monkeypatch) -> None:
    assert not set(valsynth.KINDS) & set(DEFECTS)
    assert not set(valsynth.KINDS) & set(valsynth.SYNTH_KINDS)
    assert not set(valsynth.KINDS) & {"stain", "blend", "discolour"}

    def forbidden(*a, **k):
        raise AssertionError("the validation synthesis used another synthesis")

    monkeypatch.setattr(synth, "synthesize", forbidden)
    monkeypatch.setattr(synth, "discolour", forbidden)
    monkeypatch.setattr(synth, "perlin_mask", forbidden)
    for k in list(tiles_mod.DEFECT_FNS):
        monkeypatch.setitem(tiles_mod.DEFECT_FNS, k, forbidden)
    tile = photo("gravel")[320:448, 100:228].copy()
    rng = np.random.default_rng(0)
    for kind in valsynth.KINDS:
        d, m = valsynth.make_val_defect(kind, tile, rng)
        assert (m > 0).sum() >= valsynth.MIN_AREA, kind
        assert np.array_equal(m > 0, valsynth.changed_mask(tile, d)), kind
        # local: pixels away from the defect are untouched, not merely below CHANGE
        far = ~ndimage.binary_dilation(d != tile, iterations=2)
        assert far.mean() > 0.5, kind
    # ... whereas the synth_* kinds do go through the training synthesis
    with pytest.raises(AssertionError, match="another synthesis"):
        valsynth.make_val_defect("synth_blend", tile, rng, pool=None)


def test_validation_deterministic_with_seed(tiles: Path, tmp_path: Path) -> None:
    pool = synth.TexturePool(TILE, 1, None, 0)
    img = photo("grass")
    out = {}
    for seed in (0, 1):
        man: dict[str, dict] = {}
        tiles_mod._write_validation(tmp_path / str(seed), img, np.random.default_rng(
            [seed, 1, 1]), pool, seed, 1, man)
        out[seed] = man
    ref = _manifest(tiles, "grass")["tiles"]
    val = {r: e for r, e in ref.items() if r.startswith("validation/")}
    assert out[0] == val  # same offsets as make-tiles --seed 0 (texture index 1 = grass)
    for rel in ("validation/good/007.png", "validation/test/warp/003.png",
                "validation/test/synth_blend/005.png"):
        assert np.array_equal(_png(tmp_path / "0" / rel), _png(tiles / "grass" / rel)), rel
    m = "validation/ground_truth/dent/004_mask.png"
    assert np.array_equal(_png(tmp_path / "0" / m), _png(tiles / "grass" / m))
    assert out[1] != out[0]  # another seed, other crops


def test_evaluate_runs_on_the_validation_root(tiles: Path, exported: Path, capsys) -> None:
    assert main(["evaluate", str(exported), "--dataset", str(tiles / "brick" / "validation"),
                 "--json", "--threads", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_good"] == VAL_TEST_GOOD
    assert r["n_defective"] == len(VAL_DEFECTS) * VAL_PER_DEFECT
    assert set(r["per_kind"]) == {"good", *VAL_DEFECTS}


def test_select_refuses_the_root_whose_test_is_the_evaluation_set(tiles: Path,
                                                                  tmp_path: Path) -> None:
    from exporter.errors import ExporterError
    from exporter.select import select

    texture = next(p for p in sorted(tiles.iterdir()) if (p / "validation").is_dir())
    with pytest.raises(ExporterError, match="evaluation set"):
        select(tmp_path, texture)
