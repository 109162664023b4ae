"""A trained standardizer on disk: the generator's ``state_dict`` and a JSON sidecar that rebuilds and vouches for it.

``<name>.pt``    torch.save of the generator's state_dict (tensors only; loaded with ``weights_only=True``)
``<name>.json``  the sidecar, written after the weights, so a pair with its sidecar is complete

Sidecar keys: ``format`` (1), ``kind`` ("harmonia.standardizer"), ``harmonia_version``, ``torch_version``,
``sha256`` (of the ``.pt`` file), ``settings`` (:class:`StandardizerSettings`: generator sizes, HU window,
training settings) and ``training`` (:class:`TrainingRecord`: steps and losses per stage, whether stage 2's
VGG19 was pretrained). Only the generator is saved: the discriminator exists only in stage 2, which
creates it afresh, so a stage-1 checkpoint is all that resuming stage 2 needs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

import harmonia
from harmonia.checkpoints import load_weights, save_weights
from harmonia.errors import InputError, one_line
from harmonia.results import atomic_write_text
from harmonia.standardizer.training import Standardizer, StandardizerSettings, TrainingRecord

FORMAT = 1
KIND = "harmonia.standardizer"


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """The ``.pt`` weights and ``.json`` sidecar of the checkpoint named by ``path`` (either file, or the name)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return base.with_name(base.name + ".pt"), base.with_name(base.name + ".json")


def save_standardizer(standardizer: Standardizer, path: str | Path) -> Path:
    """Write ``standardizer``'s generator and sidecar at ``path`` (folders made if missing); the ``.pt`` path."""
    weights, sidecar_path = checkpoint_files(path)
    save_weights(standardizer.generator, weights)
    sidecar = {
        "format": FORMAT,
        "kind": KIND,
        "harmonia_version": harmonia.__version__,
        "torch_version": torch.__version__,
        "sha256": file_sha256(weights),
        "settings": standardizer.settings.model_dump(mode="json"),
        "training": standardizer.record.model_dump(mode="json"),
    }
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return weights


def load_standardizer(path: str | Path, device: str | torch.device = "cpu") -> Standardizer:
    """The standardizer saved at ``path`` (``.pt``, ``.json`` or the name), its generator in eval mode on ``device``.

    A missing file, a sidecar that does not parse or validate, weights whose SHA-256 differs from the
    sidecar's (changed after saving), or weights that do not fit the sidecar's architecture is a one-line
    InputError naming the file.
    """
    weights, sidecar_path = checkpoint_files(path)
    sidecar = _read_sidecar(sidecar_path)
    try:
        settings = StandardizerSettings.model_validate(sidecar["settings"])
        record = TrainingRecord.model_validate(sidecar["training"])
    except ValidationError as exc:
        raise InputError(f"{sidecar_path}: settings or training record do not validate ({one_line(exc)})") from None
    _verified_sha256(weights, sidecar_path, sidecar["sha256"])
    generator = settings.generator.build()
    try:
        generator.load_state_dict(load_weights(weights))
    except RuntimeError as exc:
        raise InputError(
            f"{weights}: weights do not fit the generator {sidecar_path.name} describes ({one_line(exc)})"
        ) from None
    return Standardizer(generator.to(device).eval(), settings, record)


def checkpoint_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of the checkpoint's ``.pt`` file, after checking it against its sidecar's record.

    A missing file or a mismatch (the weights changed after saving) is a one-line InputError naming the file.
    """
    weights, sidecar_path = checkpoint_files(path)
    return _verified_sha256(weights, sidecar_path, _read_sidecar(sidecar_path)["sha256"])


def _verified_sha256(weights: Path, sidecar_path: Path, recorded: str) -> str:
    if not weights.is_file():
        raise InputError(f"{weights}: no such file (the weights that {sidecar_path.name} describes)")
    actual = file_sha256(weights)
    if actual != recorded:
        raise InputError(
            f"{weights}: SHA-256 {actual[:16]}... differs from {recorded[:16]}... in {sidecar_path.name}; "
            "the weights changed after they were saved"
        )
    return actual


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(
            f"{path}: no such file; a standardizer checkpoint is a .pt file and the .json sidecar saved with it"
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable standardizer sidecar ({one_line(exc)})") from None
    if not isinstance(sidecar, dict) or sidecar.get("kind") != KIND or sidecar.get("format") != FORMAT:
        raise InputError(f'{path}: not a standardizer sidecar (expected "kind": "{KIND}", "format": {FORMAT})')
    missing = [key for key in ("settings", "training") if key not in sidecar]
    if not isinstance(sidecar.get("sha256"), str):
        missing.insert(0, "sha256")
    if missing:
        raise InputError(f"{path}: standardizer sidecar lacks {', '.join(missing)}")
    return sidecar
