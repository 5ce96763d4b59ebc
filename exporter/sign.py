"""Model signatures in minisign's format (Ed25519), which `diffad model verify` and the line check
(`engine.require_signature`) and Debian's `minisign -V` reads too.

- `keygen PREFIX` writes `PREFIX.pub` and `PREFIX.key`: a minisign public key and an unencrypted
  minisign secret key (as `minisign -G -W` makes; keep the secret one off the line's units).
- `sign MODEL --key PREFIX.key` writes `MODEL.minisig`: the prehashed signature (BLAKE2b-512 of
  the file, signature algorithm `ED`), a trusted comment naming the file, its model id and the
  time, and the global signature over both.

An encrypted minisign key (made without `-W`) is refused by name: sign with `minisign -S` then.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ExporterError

SIG_ALG = b"Ed"
PREHASHED = b"ED"
NO_KDF = b"\0\0"
CHECKSUM_ALG = b"B2"


def _ed25519():  # noqa: ANN202 - the module, imported where it is needed
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - the requirement is pinned
        raise ExporterError(
            "signing needs the `cryptography` package (exporter/requirements.txt)"
        ) from e
    return ed25519


@dataclass(frozen=True)
class SecretKey:
    """An unencrypted minisign secret key."""

    keynum: bytes
    seed: bytes
    public: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.keynum)


def key_id(keynum: bytes) -> str:
    """The key id as minisign prints it (the key number as a little-endian u64, in hex)."""
    return f"{int.from_bytes(keynum, 'little'):016X}"


def _checksum(keynum: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + keynum + sk, digest_size=32).digest()


def keygen(prefix: Path, comment: str = "", force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair `PREFIX.pub` and `PREFIX.key` (mode 0600); their paths."""
    ed = _ed25519()
    pub_path, key_path = prefix.with_suffix(".pub"), prefix.with_suffix(".key")
    for p in (pub_path, key_path):
        if p.exists() and not force:
            raise ExporterError(f"{p} exists: remove it or pass --force to replace the key pair")
    priv = ed.Ed25519PrivateKey.generate()
    seed = priv.private_bytes_raw()
    public = priv.public_key().public_bytes_raw()
    keynum = secrets.token_bytes(8)
    sk = seed + public
    blob = (
        SIG_ALG
        + NO_KDF
        + CHECKSUM_ALG
        + bytes(32)
        + bytes(8)
        + bytes(8)
        + keynum
        + sk
        + _checksum(keynum, sk)
    )
    kid = key_id(keynum)
    note = f" {comment}" if comment else ""
    pub_path.write_text(
        f"untrusted comment: minisign public key {kid}{note}\n"
        f"{base64.b64encode(SIG_ALG + keynum + public).decode()}\n"
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"untrusted comment: minisign secret key {kid}{note} (unencrypted)\n")
        f.write(base64.b64encode(blob).decode() + "\n")
    return pub_path, key_path


def read_secret_key(path: Path) -> SecretKey:
    """Parse an unencrypted minisign secret key, checking its checksum."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ExporterError(f"secret key {path}: {e}") from e
    body = [ln for ln in lines if ln and not ln.startswith("untrusted comment:")]
    try:
        blob = base64.b64decode(body[0], validate=True)
    except (IndexError, ValueError) as e:
        raise ExporterError(
            f"secret key {path}: not a minisign secret key (no base64 key line)"
        ) from e
    if len(blob) != 158 or blob[:2] != SIG_ALG:
        raise ExporterError(
            f"secret key {path}: not a minisign Ed25519 secret key ({len(blob)} bytes)"
        )
    if blob[2:4] != NO_KDF:
        raise ExporterError(
            f"secret key {path} is encrypted with a password: sign with "
            f"`minisign -S -s {path} -m MODEL` (the same .minisig format), or make an "
            "unencrypted key with `minisign -G -W` or `python -m exporter keygen`"
        )
    keynum, sk, checksum = blob[54:62], blob[62:126], blob[126:158]
    # minisign -G -W leaves an unencrypted key's checksum zero; a set one must match.
    if checksum != bytes(32) and _checksum(keynum, sk) != checksum:
        raise ExporterError(f"secret key {path}: checksum does not match (damaged file)")
    return SecretKey(keynum=keynum, seed=sk[:32], public=sk[32:])


def sign(model: Path, key_path: Path, trusted_comment: str | None = None) -> Path:
    """Write `MODEL.minisig` for `model` with the secret key at `key_path`; its path."""
    ed = _ed25519()
    key = read_secret_key(key_path)
    try:
        data = model.read_bytes()
    except OSError as e:
        raise ExporterError(f"model {model}: {e}") from e
    priv = ed.Ed25519PrivateKey.from_private_bytes(key.seed)
    if priv.public_key().public_bytes_raw() != key.public:
        raise ExporterError(f"secret key {key_path}: its public half does not match its seed")
    signature = priv.sign(hashlib.blake2b(data, digest_size=64).digest())
    if trusted_comment is None:
        digest = hashlib.sha256(data).hexdigest()
        stamp = int(time.time())
        trusted_comment = f"timestamp:{stamp}\tfile:{model.name}\thashed\tsha256:{digest}"
    if "\n" in trusted_comment or "\r" in trusted_comment:
        raise ExporterError("the trusted comment must be one line")
    global_sig = priv.sign(signature + trusted_comment.encode())
    out = model.with_name(model.name + ".minisig")
    out.write_text(
        f"untrusted comment: signature from diffad-edge exporter, key {key.key_id}\n"
        f"{base64.b64encode(PREHASHED + key.keynum + signature).decode()}\n"
        f"trusted comment: {trusted_comment}\n"
        f"{base64.b64encode(global_sig).decode()}\n"
    )
    return out
