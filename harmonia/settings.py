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


class ExecutionSpec(StrictModel):
    """How a run's cells are spread over processes or machines; never what they compute.

    The recipe's ``execution:`` section (overridden by ``harmonia run --workers/--executor/--ray-address``)
    validates into this. It is left out of the recipe's fingerprint, so a run started on one worker may be
    finished on four, and it cannot be swept.
    """

    executor: Literal["local", "ray"] = Field(
        "local", description="'local': worker processes on this machine; 'ray': Ray tasks (extra harmonia[ray])"
    )
    workers: int = Field(
        1,
        ge=1,
        description="cells run side by side: local worker processes (1: in the harmonia process itself), or the "
        "CPUs of a Ray that harmonia starts",
    )
    ray_address: str | None = Field(
        None, description="a running Ray cluster to use ('auto', 'ray://host:10001'); none: start a local Ray"
    )
    cpus_per_cell: float = Field(1.0, gt=0, description="Ray: CPUs each cell asks for")
    gpus_per_cell: float = Field(
        0.0, ge=0, description="Ray: GPUs each cell asks for; a fraction (0.25) lets several small cells share a GPU"
    )
    retries: int = Field(
        2, ge=0, description="times a cell whose worker process died (killed, out of memory) is started again"
    )


class TrackingSpec(StrictModel):
    """Experiment tracking: a copy of the run folder's figures in a tracker (``tracking:`` in a recipe).

    Like :class:`ExecutionSpec` it changes no result, so it is outside the recipe's fingerprint.
    """

    backend: Literal["mlflow"] = Field("mlflow", description="the tracker (extra harmonia[mlflow])")
    uri: str | None = Field(
        None, description="tracking URI (a server, 'sqlite:///...'); none: a SQLite store in the run folder"
    )
    experiment: str | None = Field(None, description="the tracker's experiment name; none: the recipe's name")
