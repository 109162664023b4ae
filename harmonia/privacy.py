"""Pseudonyms for patient identifiers, so raw names and IDs never leave a cohort loader."""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from harmonia.paths import cache_dir

SALT_ENV = "HARMONIA_SALT"


@lru_cache(maxsize=1)
def _salt() -> bytes:
    """The salt: ``$HARMONIA_SALT`` if set, else a random one created once in the cache folder."""
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path: Path = cache_dir() / "pseudonym-salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        os.replace(tmp, path)
    return path.read_text().strip().encode()


def pseudonymize(identifier: str, namespace: str = "") -> str:
    """A stable, non-reversible pseudonym for ``identifier`` (salted SHA-256, 16 hex characters).

    ``namespace`` (e.g. the cohort name) keeps equal raw IDs of different datasets apart.
    """
    digest = hashlib.sha256(_salt() + namespace.encode() + b"\0" + str(identifier).encode())
    return "p" + digest.hexdigest()[:16]
