"""The server key that PIN hashes are made with.

PINs are stored as HMAC-SHA256 under this key, so a copy of the database alone reveals no PIN.
The embedded default creates a random key file (mode 0600) in the state directory on first use;
production points ``[server] pin_key_file`` at a key provisioned like any other secret. Losing
the key makes every issued PIN unusable, so back it up with the database.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class KeyError_(RuntimeError):
    """The key file exists but cannot be used."""


def load_or_create_pin_key(path: Path, create: bool = True) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise KeyError_(f"PIN key file not found: {path}") from None
        return _create(path)
    try:
        key = bytes.fromhex(raw.decode())
    except ValueError:
        raise KeyError_(f"PIN key file {path} does not hold a hex key") from None
    if len(key) < 16:
        raise KeyError_(f"PIN key in {path} is shorter than 16 bytes")
    return key


def _create(path: Path) -> bytes:
    """A new key, written whole before it appears under ``path``: it is written to a private
    file beside it, then linked there (which fails if the name exists). The workers of
    ``workers = N`` start at once, and a process that read the file while another was still
    writing it would take an empty key; whoever loses the race reads the winner's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key_hex = secrets.token_hex(KEY_BYTES).encode()
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_hex + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(scratch, path)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_pin_key(path, create=False)
    finally:
        scratch.unlink()
    return bytes.fromhex(key_hex.decode())
