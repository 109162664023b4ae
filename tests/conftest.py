"""Shared fixtures: an isolated cache, a registry with the toy plugins, and a fast toy recipe."""

from __future__ import annotations

import copy

import pytest
import torch
import toy_plugins

from harmonia import registry as registry_module
from harmonia.registry import Registry

TOY_RECIPE = {
    "name": "toy_run",
    "cohort": {"plugin": "toy", "synthetic": {"patients": 6, "seed": 1}},
    "model": {"plugin": "toynet", "params": {"width": 4}},
    "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "seeds": 2},
    "evaluate": ["pixel_accuracy"],
}


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """Every test caches twins in a session-wide temporary folder and sees no real data folder."""
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HARMONIA_SALT", "test-salt")
    monkeypatch.delenv("HARMONIA_DATA", raising=False)


@pytest.fixture
def registry(monkeypatch) -> Registry:
    """The installed plugins plus the toy ones, also used as the process-wide registry."""
    reg = Registry.from_entry_points(extra=[toy_plugins])
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


@pytest.fixture
def toy_recipe() -> dict:
    return copy.deepcopy(TOY_RECIPE)


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: one thread beats several, which mostly wait on each other (badly so on a busy
    machine). A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
