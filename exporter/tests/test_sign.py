"""Model signatures interoperate with minisign itself, both ways, and with `diffad model verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.sign import keygen, read_secret_key, sign

ROOT = Path(__file__).resolve().parents[2]


def minisign() -> str:
    exe = shutil.which("minisign")
    if exe is None:
        pytest.fail("minisign not found: `scripts/setup --test-deps` installs Debian's minisign")
    return exe


def diffad() -> Path:
    for profile in ("debug", "release"):
        exe = ROOT / "target" / profile / "diffad"
        if exe.exists():
            return exe
    pytest.fail("target/debug/diffad not built: run `cargo build` (scripts/test does) first")


def test_what_the_exporter_signs_minisign_and_diffad_verify_and_a_flipped_byte_fails(
    tmp_path: Path,
) -> None:
    pub, key = keygen(tmp_path / "k", "test")
    assert key.stat().st_mode & 0o077 == 0, "the secret key is the owner's alone"
    model = tmp_path / "m.onnx"
    model.write_bytes(bytes(range(256)) * 100)
    sig = sign(model, key)
    assert sig == tmp_path / "m.onnx.minisig"
    ok = subprocess.run([minisign(), "-V", "-p", pub, "-m", model], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "m.onnx" in ok.stdout  # the trusted comment names the file
    v = subprocess.run(
        [diffad(), "model", "verify", model, "--key", pub], capture_output=True, text=True
    )
    assert v.returncode == 0 and "signature good" in v.stdout, v.stdout + v.stderr
    data = bytearray(model.read_bytes())
    data[1234] ^= 1
    model.write_bytes(bytes(data))
    bad = subprocess.run([minisign(), "-V", "-p", pub, "-m", model], capture_output=True, text=True)
    assert bad.returncode != 0
    v = subprocess.run(
        [diffad(), "model", "verify", model, "--key", pub], capture_output=True, text=True
    )
    assert v.returncode == 1 and "does not match its signature" in v.stdout, v.stdout


def test_keys_minisign_made_sign_here_and_keys_made_here_sign_with_minisign(tmp_path: Path) -> None:
    subprocess.run(
        [minisign(), "-G", "-W", "-p", tmp_path / "m.pub", "-s", tmp_path / "m.key"],
        check=True,
        capture_output=True,
    )
    model = tmp_path / "x.onnx"
    model.write_bytes(b"model bytes")
    sign(model, tmp_path / "m.key")
    subprocess.run(
        [minisign(), "-V", "-p", tmp_path / "m.pub", "-m", model], check=True, capture_output=True
    )
    pub, key = keygen(tmp_path / "ours")
    other = tmp_path / "y.onnx"
    other.write_bytes(b"other bytes")
    subprocess.run([minisign(), "-S", "-s", key, "-m", other], check=True, capture_output=True)
    v = subprocess.run(
        [diffad(), "model", "verify", other, "--key", pub], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout + v.stderr
    # Signed by one key, checked against another: refused, naming the key tried.
    v = subprocess.run(
        [diffad(), "model", "verify", model, "--key", pub], capture_output=True, text=True
    )
    assert v.returncode == 1 and "ours.pub" in v.stdout, v.stdout


def test_an_encrypted_or_damaged_key_is_refused_by_name(tmp_path: Path) -> None:
    enc = subprocess.run(
        [minisign(), "-G", "-p", tmp_path / "e.pub", "-s", tmp_path / "e.key"],
        input="pw\npw\n",
        capture_output=True,
        text=True,
    )
    assert enc.returncode == 0, enc.stderr
    with pytest.raises(ExporterError, match="encrypted with a password"):
        read_secret_key(tmp_path / "e.key")
    (tmp_path / "junk.key").write_text("untrusted comment: x\nbm90IGEga2V5\n")
    with pytest.raises(ExporterError, match="not a minisign Ed25519 secret key"):
        read_secret_key(tmp_path / "junk.key")


def test_the_shipped_models_are_signed_with_the_demo_key() -> None:
    demo = ROOT / "models/demo-signing.pub"
    assert "DEMO KEY" in demo.read_text()
    for model in sorted((ROOT / "models").glob("*/model.onnx")):
        ok = subprocess.run(
            [minisign(), "-V", "-p", demo, "-m", model], capture_output=True, text=True
        )
        assert ok.returncode == 0, f"{model}: {ok.stderr}"
