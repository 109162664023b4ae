"""Run settings the engine needs, kept below both the engine and the recipe loader.

The recipe's ``train:`` section validates into :class:`TrainSpec`; the engine reads it without
importing the recipe machinery (YAML, sweeps, plugin registry).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from harmonia.strict import StrictModel


class TrainSpec(StrictModel):
    """Training settings of every (seed, training domain) cell; defaults are those of Guo et al."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(
        50,
        ge=2,
        description="items per training batch; at least 2, since a batch of one breaks normalisation layers "
        "(the engine skips such a batch, so a size of 1 would train nothing)",
    )
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seeds: int = Field(10, ge=1, description="repetitions with different splits and initialisations")
    selection: Literal["best_val", "last"] = Field(
        "best_val", description="keep the epoch best on the training domain's validation split, or the last"
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels-last memory format for 2-D convolutions")
    save_models: bool = Field(False, description="keep each cell's selected weights in the run folder (models/)")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch's CPU threads for the run (none: torch's default, one per core); 1 is faster for tiny "
        "models, whose per-operation work is too small to share, above all when other jobs use the cores",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value
