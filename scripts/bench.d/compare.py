"""The recipe comparison table (docs/models.md "Survey recipes on brick"): every brick model under models/,
each sampler model at several step counts (calibrated on the validation split at each, as
the shipped model was at its own), evaluated once on the brick evaluation set with
`diffad eval` and timed with `diffad bench`, all in one run.

    scripts/compare-recipes [--iterations N] [--threads T] [--steps 5,10,25]

Writes target/bench/recipes.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIFFAD = ROOT / "target" / "release" / "diffad"
MODELS = ("tiles-brick", "brick-diffusionad-40min", "brick-advrad", "brick-dte", "brick-anoddpm")


def manifest(model: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from exporter.onnxio import get_manifest, load_model

    return get_manifest(load_model(model))


def run_json(args: list[str]) -> dict:
    p = subprocess.run([str(DIFFAD), *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"diffad {' '.join(args)} failed:\n{p.stderr}")
    return json.loads(p.stdout)


def calibrated_copy(model: Path, steps: int, a: argparse.Namespace) -> Path:
    """The model and its goldens copied, calibrated at `steps` the way the shipped one was at
    its own (a threshold holds only at the step count it was calibrated at)."""
    import shutil

    out = ROOT / "target" / "bench" / "recipes" / f"{model.parent.name}-{steps}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for p in model.parent.glob("model.*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, out / p.name)
    subprocess.run([sys.executable, "-m", "exporter", "calibrate", str(out / "model.onnx"),
                    "--good", str(a.dataset), "--steps", str(steps), "--plot",
                    str(out / "calibration.png")], check=True, capture_output=True, cwd=ROOT)
    return out / "model.onnx"


def row(name: str, model: Path, m: dict, steps: int | None, a: argparse.Namespace) -> dict:
    """One table row: `model` (manifest `m`) at `steps` (None: a one-call model)."""
    if steps is not None and steps != m["sampler"]["steps"]:
        model = calibrated_copy(model, steps, a)
    extra: list[str] = []
    ev = run_json(["eval", "--model", str(model), "--dataset", str(a.dataset), "--json", *extra])
    out = ROOT / "target" / "bench" / f"recipe-{name}-{steps or 0}.json"
    subprocess.run([str(DIFFAD), "bench", "--model", str(model), "--iterations",
                    str(a.iterations), "--threads", str(a.threads), "--json", str(out), *extra],
                   check=True, capture_output=True)
    b = json.loads(out.read_text())
    return {"model": name, "steps": steps, "image_auroc": ev["image_auroc"],
            "pixel_auroc": ev["pixel_auroc"], "pro": ev["pro"],
            "escape_rate": ev["escape_rate"], "false_reject_rate": ev["false_reject_rate"],
            "network_calls": b["network_calls"], "ms_per_frame": b["pipeline"]["p50_ms"],
            "fps": b["pipeline"]["fps"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=ROOT / "work" / "tiles" / "brick")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", default="5,10,25", help="step counts of sampler models")
    a = p.parse_args()
    rows = []
    for name in MODELS:
        model = ROOT / "models" / name / "model.onnx"
        if not model.exists():
            print(f"skipping {name}: {model} missing", file=sys.stderr)
            continue
        m = manifest(model)
        counts = [int(s) for s in a.steps.split(",")] if "sampler" in m else [None]
        for steps in counts:
            r = row(name, model, m, steps, a)
            r["method"] = m["method"]
            rows.append(r)
            print(f"{name} steps {steps}: {r}", file=sys.stderr, flush=True)
    out = ROOT / "target" / "bench" / "recipes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | method | steps | image AUROC | pixel AUROC | PRO@30% | escapes | false "
          "rejects | network calls | ms/frame (p50) | FPS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['model']}` | {r['method']} | {r['steps'] or '-'} | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.3f} | {r['pro']:.3f} | {r['escape_rate']:.1%} | "
              f"{r['false_reject_rate']:.1%} | {r['network_calls']} | {r['ms_per_frame']:.1f} | "
              f"{r['fps']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
