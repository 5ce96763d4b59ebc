from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from exporter.__main__ import main
from exporter.official import build_from_checkpoint

from .conftest import write_images

ARGS = ["--image-size", "32", "--base-channels", "16", "--channel-mults", "1,2",
        "--attention-resolutions", "16", "--seg-width", "4", "--batch", "2", "--threads", "1",
        "--seed", "3", "--seg-extra", "1", "--focal-gamma", "2"]


def test_train_checkpoint_resume_is_exact(tmp_path: Path) -> None:
    data = tmp_path / "data" / "train" / "good"  # MVTec-style layout
    write_images(data, 4)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(a), "--steps", "3",
                 *ARGS]) == 0
    assert main(["train", "--data", str(data), "--out", str(b), "--steps", "2", *ARGS]) == 0
    assert main(["train", "--data", str(data), "--out", str(b), "--steps", "3", *ARGS]) == 0
    ca = torch.load(a / "last.pt", weights_only=False)
    cb = torch.load(b / "last.pt", weights_only=False)
    assert ca["exporter"]["step"] == cb["exporter"]["step"] == 3
    assert _weights_equal(a, b)
    # the checkpoint is in the official layout and exports
    assert set(ca) >= {"unet_model_state_dict", "seg_model_state_dict", "n_epoch", "args"}
    unet, seg, info = build_from_checkpoint(a, official=False)
    assert info["training"]["seed"] == 3 and info["training"]["steps"] == 3
    assert main(["export", "--checkpoint", str(a), "--out", str(tmp_path / "m.onnx"),
                 "--threads", "1"]) == 0


def test_synthesis_masks_and_blend() -> None:
    import numpy as np

    from exporter.synth import TexturePool, perlin_mask, synthesize

    rng = np.random.default_rng(0)
    pool = TexturePool(32, 1, None, 0)
    x = np.full((1, 32, 32), 0.5, np.float32)
    for _ in range(5):
        aug, m = synthesize(x, pool, rng)
        assert aug.shape == x.shape and m.shape == (1, 32, 32)
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert np.array_equal(aug[m == 0], x[m == 0])  # outside the mask: untouched
    assert perlin_mask(64, rng).sum() > 0


def test_procedural_textures_cover_flat_fills() -> None:
    import numpy as np

    from exporter.synth import procedural_texture

    rng = np.random.default_rng(1)
    spreads = []
    for _ in range(200):
        t = procedural_texture(32, rng)
        assert t.shape == (32, 32) and t.dtype == np.float32
        assert 0.0 <= t.min() and t.max() <= 1.0
        spreads.append(float(np.ptp(t)))
    # structured kinds span [0, 1]; the flat and ramp fills (discolouration) stay narrow
    assert any(s <= 0.3 for s in spreads) and any(s > 0.9 for s in spreads)


def test_discolour_shifts_grey_level_and_keeps_texture() -> None:
    import numpy as np

    from exporter.synth import TexturePool, synthesize

    rng = np.random.default_rng(3)
    pool = TexturePool(64, 1, None, 0)
    x = (0.5 + 0.02 * np.random.default_rng(4).standard_normal((1, 64, 64))).astype(np.float32)
    for _ in range(5):
        aug, m = synthesize(x, pool, rng, discolour_prob=1.0)
        assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0
        d = (aug - x)[m > 0]
        assert np.all(np.abs(d) >= 0.07) and (np.all(d > 0) or np.all(d < 0))
        # texture kept: the added field is smooth, not a replacement of the pixels
        shift = aug - x
        assert np.abs(np.diff(shift, axis=2)).mean() < 0.3 * np.abs(np.diff(x, axis=2)).mean()


def test_self_texture_refills_a_blob_with_the_parts_own_texture() -> None:
    import numpy as np
    from skimage import data

    from exporter.synth import TexturePool, synthesize

    rng = np.random.default_rng(5)
    pool = TexturePool(64, 1, None, 0)
    x = (data.grass()[:64, :64].astype(np.float32) / 255.0)[None]
    changed = 0
    for _ in range(20):
        aug, m = synthesize(x, pool, rng, discolour_prob=0.0, self_prob=1.0)
        assert aug.shape == x.shape and m.shape == (1, 64, 64)
        assert np.isfinite(aug).all() and aug.min() >= 0.0 and aug.max() <= 1.0
        assert set(np.unique(m)) <= {0.0, 1.0}
        # outside the mask the part is untouched; inside, the pixels really moved
        assert np.array_equal(aug[m == 0], x[m == 0])
        if m.sum() > 0:
            changed += int(np.abs(aug - x)[m > 0].mean() > 0.05)
            # the fill is the same material: grey level within the part's own range
            assert abs(float(aug[m > 0].mean()) - float(x.mean())) < 0.2
    assert changed >= 15


def test_synthesis_shares_route_to_each_family() -> None:
    import numpy as np

    from exporter import synth

    calls: list[str] = []

    def spy(name):
        def f(x, rng):
            calls.append(name)
            return x, np.zeros((1,) + x.shape[1:], np.float32)
        return f

    rng = np.random.default_rng(0)
    pool = synth.TexturePool(32, 1, None, 0)
    x = np.full((1, 32, 32), 0.5, np.float32)
    orig = synth.discolour, synth.self_texture
    synth.discolour, synth.self_texture = spy("stain"), spy("self")
    try:
        for _ in range(400):
            synth.synthesize(x, pool, rng, discolour_prob=0.3, self_prob=0.3)
    finally:
        synth.discolour, synth.self_texture = orig
    assert 90 < calls.count("stain") < 150 and 90 < calls.count("self") < 150


def test_loss_log_plot_summary_and_resume(tmp_path: Path, capsys) -> None:
    from exporter.train import LOSS_COLUMNS, read_loss_log

    data = tmp_path / "good"
    write_images(data, 4)
    out = tmp_path / "ck"
    args = ["train", "--data", str(data), "--out", str(out), "--checkpoint-every", "2", *ARGS]
    assert main([*args, "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert f"data: {data} (4 images" in err and "parameters" in err
    assert "thread(s)" in err and "steps: 0 -> 2" in err and f"{out}/last.pt" in err
    h = read_loss_log(out / "loss.csv")
    assert h["step"] == [1.0, 2.0] and all(v > 0 for v in h["loss"])
    assert (out / "loss.png").is_file()
    # a row written after the checkpoint (a crash before the next one) is dropped on resume
    with (out / "loss.csv").open("a") as f:
        f.write("3,9.9,1,1,1,1\n")
    assert main([*args, "--steps", "4"]) == 0
    assert "steps: 2 -> 4" in capsys.readouterr().err
    h = read_loss_log(out / "loss.csv")
    assert h["step"] == [1.0, 2.0, 3.0, 4.0] and h["elapsed_s"][2] != 9.9
    assert (out / "loss.csv").read_text().splitlines()[0] == ",".join(LOSS_COLUMNS)


def test_time_left_shows_whichever_stops_first() -> None:
    from exporter.train import time_left

    assert time_left(100, 1.0, None) == "0:01:40 (steps)"
    assert time_left(100, 1.0, 30.0) == "0:00:30 (max-minutes)"
    assert time_left(10, 1.0, 3600.0) == "0:00:10 (steps)"


@pytest.mark.parametrize("sig,workers", [("SIGINT", "0"), ("SIGTERM", "0"), ("SIGINT", "2")])
def test_signal_writes_checkpoint(tmp_path: Path, sig: str, workers: str) -> None:
    """The signal goes to the whole process group, as Ctrl-C and systemd send it: batch
    workers must not die before the trainer has written its checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "good"
    write_images(data, 4)
    out = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "train", "--data", str(data), "--out", str(out),
         "--steps", "100000", "--checkpoint-every", "100000", *ARGS, "--workers", workers],
        cwd=root, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for a few steps
            p = out / "loss.csv"
            if p.exists() and len(p.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert not (out / "last.pt").exists()  # no periodic checkpoint before the signal
        os.killpg(proc.pid, getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"{sig}: checkpoint written" in err
    assert "Traceback" not in err and "BrokenProcessPool" not in err, err
    ck = torch.load(out / "last.pt", weights_only=False)
    step = ck["exporter"]["step"]
    assert step >= 2 and "opt_unet" in ck["exporter"] and "rng" in ck["exporter"]
    assert (out / "loss.png").is_file()


def _weights_equal(a: Path, b: Path) -> bool:
    ca = torch.load(a / "last.pt", weights_only=False)
    cb = torch.load(b / "last.pt", weights_only=False)
    return all(torch.equal(v, cb[net][k]) for net in ("unet_model_state_dict",
                                                        "seg_model_state_dict")
               for k, v in ca[net].items())


def test_worker_batches_depend_on_seed_and_step_alone(tmp_path: Path) -> None:
    """One worker straight through, two workers with a resume in between: the same weights,
    since each batch is seeded by (seed, step, slot) wherever it is drawn."""
    data = tmp_path / "good"
    write_images(data, 4, size=64)  # the model's size: smaller ones are refused
    a, b = tmp_path / "a", tmp_path / "b"
    base = ["train", "--data", str(data), *ARGS, "--image-size", "64", "--crop", "32",
            "--jitter", "0.5"]
    assert main([*base, "--out", str(a), "--steps", "3", "--workers", "1"]) == 0
    assert main([*base, "--out", str(b), "--steps", "2", "--workers", "2"]) == 0
    assert main([*base, "--out", str(b), "--steps", "3", "--workers", "2"]) == 0
    assert _weights_equal(a, b)
    # and the in-process stream is another one: the workers really drew these batches
    c = tmp_path / "c"
    assert main([*base, "--out", str(c), "--steps", "3"]) == 0
    assert not _weights_equal(a, c)


def test_train_device_errors_name_the_fix(tmp_path: Path, capsys) -> None:
    data = tmp_path / "good"
    write_images(data, 2)
    base = ["train", "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "1", *ARGS]
    assert main([*base, "--workers", "-1"]) != 0
    assert "--workers -1" in capsys.readouterr().err
    assert main([*base, "--image-size", "64", "--crop", "64", "--jitter", "0.5"]) != 0
    assert "use --crop 32 or smaller" in capsys.readouterr().err
    assert main([*base, "--jitter", "1.5"]) != 0
    assert "--jitter 1.5: give a share" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) != 0
        err = capsys.readouterr().err
        assert "--device cuda" in err and "use --device cpu" in err
    # auto falls back to the CPU and records where it trained
    assert main([*base, "--device", "auto"]) == 0
    ck = torch.load(tmp_path / "o" / "last.pt", weights_only=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert ck["exporter"]["training"]["device"] == want


def test_jittered_crops_never_sample_outside_the_image() -> None:
    import numpy as np

    from exporter.errors import ExporterError
    from exporter.feed import jittered_crop

    rng = np.random.default_rng(0)
    flat = np.full((5, 1, 128, 128), 0.5, np.float32)
    for _ in range(50):
        c = jittered_crop(flat, 64, rng)
        assert c.shape == (1, 64, 64) and c.dtype == np.float32
        # padding (0) or a seam would break the flat field; contrast and brightness keep it flat
        assert float(c.max() - c.min()) < 1e-5 and abs(float(c.mean()) - 0.5) <= 0.0501
    ramp = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))[None, None]
    turned = [jittered_crop(ramp, 64, rng)[0] for _ in range(20)]
    # any angle: the ramp's gradient points in many directions, not only the four of rot90
    angles = {round(float(np.degrees(np.arctan2(np.gradient(t)[0].mean(),
                                                 np.gradient(t)[1].mean()))) / 10) for t in turned}
    assert len(angles) > 8
    with pytest.raises(ExporterError, match="smaller --crop"):
        jittered_crop(flat, 128, rng)


def test_batch_feed_after_a_jump_draws_the_new_steps_batches(tmp_path: Path) -> None:
    """A caller that skips steps gets the batches of the step it asks for, not the prefetched
    ones of the steps it skipped."""
    import numpy as np

    from exporter.edge import EdgeUNetConfig
    from exporter.feed import BatchFeed, make_batch
    from exporter.synth import TexturePool
    from exporter.train import TrainOptions

    images = np.random.default_rng(0).random((3, 1, 48, 48), dtype=np.float32)
    opts = TrainOptions(data=tmp_path, out=tmp_path, unet=EdgeUNetConfig(), batch=2, crop=32,
                        seg_extra=1, workers=1)
    pool = TexturePool(32, 1, None, opts.seed)

    def expected(step: int) -> list:
        return [make_batch(images, opts, pool, np.random.default_rng([opts.seed, step, slot]))
                for slot in range(2)]

    with BatchFeed(images, opts, pool, np.random.default_rng(0)) as feed:
        feed.batches(1)  # leaves steps 2 and 3 prefetched
        for step in (7, 8):
            got = feed.batches(step)
            for g, e in zip(got, expected(step), strict=True):
                assert all(torch.equal(a, b) for a, b in zip(g, e, strict=True))


def test_batch_feed_workers_are_born_deaf_to_stop_signals(tmp_path: Path) -> None:
    """A Ctrl-C reaches the whole process group; a worker still importing when it comes must not
    die of it. Its SIGINT / SIGTERM are blocked from its first instruction on."""
    import os

    import numpy as np

    from exporter.edge import EdgeUNetConfig
    from exporter.feed import BatchFeed
    from exporter.synth import TexturePool
    from exporter.train import TrainOptions

    images = np.random.default_rng(0).random((2, 1, 48, 48), dtype=np.float32)
    opts = TrainOptions(data=tmp_path, out=tmp_path, unet=EdgeUNetConfig(), batch=2, crop=32,
                        workers=2)
    pool = TexturePool(32, 1, None, opts.seed)
    with BatchFeed(images, opts, pool, np.random.default_rng(0)) as feed:
        feed._submit(1)
        feed._submit(2)
        assert feed.exec is not None
        pids = list(feed.exec._processes)  # started by the submits, still starting up
        assert len(pids) == 2
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text()
            blocked = int(next(ln for ln in status.splitlines()
                               if ln.startswith("SigBlk:")).split()[1], 16)
            for sig in (signal.SIGINT, signal.SIGTERM):
                assert blocked & (1 << (sig - 1)), f"worker {pid}: {sig.name} not blocked"
        assert os.getpid() not in pids
    # the trainer's own mask is left as it was
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
