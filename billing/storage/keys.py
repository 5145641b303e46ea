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
        path.parent.mkdir(parents=True, exist_ok=True)
        key_hex = secrets.token_hex(KEY_BYTES).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_pin_key(path, create=False)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_hex + b"\n")
        return bytes.fromhex(key_hex.decode())
    try:
        key = bytes.fromhex(raw.decode())
    except ValueError:
        raise KeyError_(f"PIN key file {path} does not hold a hex key") from None
    if len(key) < 16:
        raise KeyError_(f"PIN key in {path} is shorter than 16 bytes")
    return key
