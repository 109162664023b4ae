"""Trained models kept on disk: the selected weights as a ``state_dict``, and a JSON sidecar saying how to rebuild them.

Layout in a run folder (with ``train.save_models: true``), one pair per (sweep point, seed, training domain) cell::

    models/sweep{sweep_id}-seed{seed}-{domain}.pt     torch.save of the model's state_dict (tensors only)
    models/sweep{sweep_id}-seed{seed}-{domain}.json   the sidecar

``{domain}`` is the training domain with each character outside ``A-Z a-z 0-9 . _ -`` replaced by ``_``,
followed by ``-`` and 8 hex digits of the name's SHA-256 when anything was replaced, so that two
domains never share a file; the sidecar keeps the name as it is. The sidecar is written after the
weights, so a pair with its sidecar is complete.

Sidecar keys: ``format`` (1), ``harmonia_version``, ``torch_version``, ``model`` {``plugin``, ``params``},
``task`` {``kind``, ``class_names``, ``spatial_dims``, ``in_channels``, ``item_shape``}, ``cell`` {``sweep_id``, ``seed``,
``train_domain``}, ``selection`` {``rule``, ``metric``, ``epoch``}, ``mitigations`` [{``plugin``, ``params``}].

A loaded model expects what the engine fed it: images z-scored per image, after the
``transform_images`` stage of the cell's mitigations (listed in the sidecar, not saved with the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import harmonia
from harmonia.api import Model, Plugin, Task
from harmonia.errors import InputError, one_line
from harmonia.registry import Registry, default_registry
from harmonia.results import atomic_write_text

FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class CheckpointInfo:
    """The cell a model was trained in, how its epoch was chosen, and the mitigations it was trained with."""

    sweep_id: int
    seed: int
    train_domain: str
    #: ``best_val`` or ``last`` (the recipe's ``train.selection``)
    selection_rule: str
    #: the validation metric that chose the epoch; None when the last epoch was kept
    selection_metric: str | None
    selected_epoch: int
    #: ``{"plugin": name, "params": {...}}`` per mitigation, in recipe order (see :func:`plugin_record`)
    mitigations: tuple[dict[str, Any], ...] = ()


def plugin_record(plugin: Plugin) -> dict[str, Any]:
    """A plugin instance as JSON: its name and its parameters with every default filled in."""
    return {"plugin": plugin.name, "params": plugin.params.model_dump(mode="json")}


def checkpoint_path(folder: Path, sweep_id: int, seed: int, train_domain: str) -> Path:
    """The ``.pt`` file of a cell's model in ``folder`` (its sidecar is the same path ending ``.json``)."""
    domain = _UNSAFE.sub("_", train_domain)
    if domain != train_domain or not domain:
        domain += "-" + hashlib.sha256(train_domain.encode()).hexdigest()[:8]
    return Path(folder) / f"sweep{sweep_id}-seed{seed}-{domain}.pt"


def save_model(folder: Path, model: Model, info: CheckpointInfo) -> Path:
    """Write ``model``'s current weights and their sidecar into ``folder`` (made if missing); the ``.pt`` path."""
    path = checkpoint_path(folder, info.sweep_id, info.seed, info.train_domain)
    save_weights(model, path)
    task = model.task
    sidecar = {
        "format": FORMAT,
        "harmonia_version": harmonia.__version__,
        "torch_version": torch.__version__,
        "model": plugin_record(model),
        "task": {
            "kind": task.kind,
            "class_names": list(task.class_names),
            "spatial_dims": task.spatial_dims,
            "in_channels": task.in_channels,
            "item_shape": list(task.item_shape),
        },
        "cell": {"sweep_id": info.sweep_id, "seed": info.seed, "train_domain": info.train_domain},
        "selection": {"rule": info.selection_rule, "metric": info.selection_metric, "epoch": info.selected_epoch},
        "mitigations": list(info.mitigations),
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return path


def load_model(path: str | Path, registry: Registry | None = None) -> Model:
    """The model saved at ``path`` (``.pt`` or ``.json``), rebuilt through the registry, with its weights, in eval mode.

    A missing or malformed sidecar, an unknown model plugin, parameters the plugin rejects, or a
    weights file that is missing, corrupt or does not fit the model is a one-line InputError naming the file.
    """
    weights, sidecar_path = Path(path).with_suffix(".pt"), Path(path).with_suffix(".json")
    sidecar = _read_sidecar(sidecar_path)
    registry = registry or default_registry()
    try:
        t = sidecar["task"]
        shape = tuple(t.get("item_shape", ()))  # absent from sidecars written before harmonia recorded it
        task = Task(t["kind"], tuple(t["class_names"]), t["spatial_dims"], t["in_channels"], shape)
        model: Model = registry.create("model", sidecar["model"]["plugin"], sidecar["model"]["params"], task)
    except (InputError, KeyError, TypeError) as exc:  # an unknown plugin or rejected parameters: PluginError
        raise InputError(f"{sidecar_path}: cannot rebuild the model: {one_line(exc)}") from None
    if not weights.is_file():
        raise InputError(f"{weights}: no such file (the weights that {sidecar_path.name} describes)")
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"{weights}: weights do not fit model '{model.name}' with the sidecar's parameters ({one_line(exc)})"
        ) from None
    return model.eval()


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such file; a checkpoint is a .pt file and the .json sidecar saved with it")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable checkpoint sidecar ({one_line(exc)})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise InputError(f'{path}: not a harmonia checkpoint sidecar (expected "format": {FORMAT})')
    missing = [key for key in ("model", "task") if not isinstance(sidecar.get(key), dict)]
    if missing:
        raise InputError(f"{path}: checkpoint sidecar lacks {', '.join(missing)}")
    return sidecar


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Write ``module``'s state dict (CPU tensors) to ``path`` atomically (folders made if missing), so that a
    crash never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_weights(weights: Path) -> dict[str, torch.Tensor]:
    """A state dict read with ``torch.load(..., weights_only=True)``; an InputError naming the file when it holds
    anything but a dict of tensors or is not a torch checkpoint (harmonia never runs code from a checkpoint)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{weights}: cannot be loaded as weights only (it holds objects other than tensors, or is damaged); "
            "harmonia never runs code from a checkpoint"
        ) from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        reason = f"damaged or not written by torch.save: {type(exc).__name__}"
        raise InputError(f"{weights}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise InputError(f"{weights}: not a checkpoint (holds a {type(state).__name__}, not a state_dict)")
    return state
