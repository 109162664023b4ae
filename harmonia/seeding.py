"""Seeds derived from what a cell is, so any (sweep point, seed, training domain) cell can be rerun alone."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from the SHA-256 of ``parts`` (stable across processes and platforms)."""
    text = json.dumps([str(p) for p in parts], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's RNGs (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
