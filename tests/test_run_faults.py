"""Faults around a run: damaged or changed run folders, a plugin that raises, path and disk failures,
interruption, and configuration errors that show only once the cohort is loaded."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import toy_plugins
import yaml

import harmonia
from harmonia import hookimpl
from harmonia import registry as registry_module
from harmonia.api import Mitigation
from harmonia.cli import main
from harmonia.registry import Registry
from harmonia.results import LOCK_NAME, RunFolder, atomic_write_text


class BrokenMitigation(Mitigation):
    """Raises a ValueError while training on domain B, to simulate a plugin bug mid-run."""

    name = "broken"
    domains: ClassVar[list[str]] = []

    def adjust_training_set(self, train, target_train, rng):
        BrokenMitigation.domains = sorted(set(train.domains))
        return train

    def augment_batch(self, images, targets):
        if BrokenMitigation.domains == ["B"]:
            raise ValueError("the batch is not what I expected")
        return images, targets


class InterruptingMitigation(Mitigation):
    """Presses Ctrl-C at the start of the second cell."""

    name = "interrupting"
    cells: ClassVar[int] = 0

    def adjust_training_set(self, train, target_train, rng):
        InterruptingMitigation.cells += 1
        if InterruptingMitigation.cells == 2:
            raise KeyboardInterrupt
        return train


class DynamicTaskCohort(toy_plugins.ToyCohort):
    """The toy cohort with a task known only once it is built, as cohorts whose task depends on parameters."""

    name = "toy_dynamic"

    @property
    def task(self):
        return toy_plugins.ToyCohort.task


@hookimpl
def harmonia_mitigations():
    return [BrokenMitigation, InterruptingMitigation]


@hookimpl
def harmonia_cohorts():
    return [DynamicTaskCohort]


@pytest.fixture
def faulty(monkeypatch) -> Registry:
    reg = Registry.from_entry_points(extra=[toy_plugins, sys.modules[__name__]])
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


def recipe_file(tmp_path, recipe, **changes):
    data = {**recipe, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def finished_run(tmp_path, toy_recipe, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(run_dir)]) == 0
    capsys.readouterr()
    return run_dir


# -- resume ------------------------------------------------------------------------------------


def test_resume_redoes_a_cell_that_a_cut_results_file_holds_only_partly(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    complete = pd.read_csv(run_dir / "results.csv")
    text = (run_dir / "results.csv").read_text()
    (run_dir / "results.csv").write_text(text[: len(text) - 9])  # the last row cut mid-line
    assert main(["run", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 cells (3 already done)" in out
    again = pd.read_csv(run_dir / "results.csv")
    assert len(again) == len(complete)
    assert again["n"].dtype.kind == "i"
    pd.testing.assert_frame_equal(again.drop(columns="value"), complete.drop(columns="value"))


def test_resume_redoes_a_cell_with_rows_missing(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    results = pd.read_csv(run_dir / "results.csv")
    results.drop(index=[0]).to_csv(run_dir / "results.csv", index=False)  # one of the first cell's two rows
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert "4 cells (3 already done)" in capsys.readouterr().out
    assert len(pd.read_csv(run_dir / "results.csv")) == len(results)


def test_report_of_a_damaged_results_file_names_file_and_line(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    lines = (run_dir / "results.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",two"  # n no longer a number
    (run_dir / "results.csv").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run_dir / 'results.csv'}: damaged results file: line(s) 3" in err[0]


def test_a_corrupt_manifest_is_one_line_and_exit_2_for_resume_and_report(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    (run_dir / "manifest.json").write_text('{"status": "comp')
    for argv in (["run", "--resume", str(run_dir)], ["report", str(run_dir)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{run_dir / 'manifest.json'}: damaged run manifest" in err[0]


def test_resume_refuses_a_changed_recipe(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    before = (run_dir / "results.csv").read_text()
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["train"]["epochs"] = 3
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "the recipe changed since the run started" in capsys.readouterr().err
    assert (run_dir / "results.csv").read_text() == before


def test_a_second_process_on_one_run_folder_is_refused_and_a_stale_lock_taken_over(
    faulty, toy_recipe, tmp_path, capsys
):
    import socket

    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    lock = run_dir / LOCK_NAME
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live process holds it
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "another harmonia process" in capsys.readouterr().err
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    lock.write_text(f"{socket.gethostname()} {dead}")
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert not lock.exists()


# -- a plugin that raises, interruption ---------------------------------------------------------


def test_a_plugin_that_raises_is_named_with_its_cell_and_the_finished_cells_are_reported(
    faulty, toy_recipe, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    path = recipe_file(tmp_path, toy_recipe, mitigations=[{"plugin": "broken"}])
    assert main(["run", path, "--out", str(run_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert (
        "cell (sweep 0, seed 0, train B) failed in mitigation 'broken': ValueError: the batch is not what I expected"
        in err[0]
    )
    assert str(run_dir) in err[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the batch is not what I expected" in manifest["error"]
    log = (run_dir / "harmonia.log").read_text()
    assert "Traceback" in log and "augment_batch" in log
    assert (run_dir / "report.md").exists() and len(pd.read_csv(run_dir / "results.csv")) == 2  # cell (seed 0, train A)


def test_debug_prints_the_traceback(faulty, toy_recipe, tmp_path, capsys):
    path = recipe_file(tmp_path, toy_recipe, mitigations=[{"plugin": "broken"}])
    assert main(["run", path, "--out", str(tmp_path / "run"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_names_the_real_run_folder(faulty, toy_recipe, tmp_path, capsys):
    InterruptingMitigation.cells = 0
    run_dir = tmp_path / "run"
    path = recipe_file(tmp_path, toy_recipe, mitigations=[{"plugin": "interrupting"}])
    assert main(["run", path, "--out", str(run_dir)]) == 130
    assert f"harmonia run --resume {run_dir} finishes the rest" in capsys.readouterr().err
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert not (run_dir / LOCK_NAME).exists()


# -- the environment refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("out", ["file", "/dev/null", "below-a-file"])
def test_an_unusable_out_path_is_one_line_and_exit_2(faulty, toy_recipe, tmp_path, capsys, out):
    (tmp_path / "file").write_text("x")
    target = {"file": str(tmp_path / "file"), "/dev/null": "/dev/null", "below-a-file": str(tmp_path / "file" / "run")}[
        out
    ]
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harmonia: error:") and "Traceback" not in err[0]


def test_a_cache_that_is_a_file_is_one_line_and_exit_2(faulty, toy_recipe, tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "cache"))
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "cache") in err[0]


def test_synth_into_a_file_is_one_line_and_exit_2(faulty, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["synth", "toy", "--out", str(tmp_path / "file")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_full_disk_fails_the_run_in_one_line_and_leaves_no_temporary_files(
    faulty, toy_recipe, tmp_path, capsys, monkeypatch
):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.results_path))

    monkeypatch.setattr(RunFolder, "add_cell", full)
    run_dir = tmp_path / "run"
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"harmonia: error: {run_dir / 'results.csv'}: No space left on device"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / LOCK_NAME).exists()


def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


# -- configuration errors that show only once the cohort is loaded ----------------------------------


def test_a_target_using_mitigation_on_one_domain_is_exit_2_before_training(registry, toy_recipe, tmp_path, capsys):
    toy_plugins.SpyMitigation.target_batches.clear()
    toy_recipe["cohort"]["params"] = {"domains": ["A"]}
    path = recipe_file(tmp_path, toy_recipe, mitigations=[{"plugin": "spy_mitigation"}])
    assert main(["run", path, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mitigations[0].plugin: 'spy_mitigation' needs target-domain images" in err and "one domain (A)" in err
    assert toy_plugins.SpyMitigation.target_batches == []
    assert not (tmp_path / "run" / "results.csv").exists()


def test_a_domain_with_too_few_patients_is_exit_2_before_training(registry, toy_recipe, tmp_path, capsys):
    toy_recipe["cohort"]["synthetic"]["patients"] = 2
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cohort toy: domain A has 2 patient(s); the protocol needs at least 3" in err[0]


def test_the_manifest_names_library_versions_and_the_recipe_hash(faulty, toy_recipe, tmp_path, capsys):
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    libraries = manifest["libraries"]
    for name in ("torch", "monai", "numpy", "pydicom", "SimpleITK"):
        assert libraries[name], name
    assert "kornia" in libraries
    assert len(manifest["recipe_sha256"]) == 64
    assert manifest["plugins"]["model:toynet"]["distribution"] == "local"
    assert [c["rows"] for c in manifest["cells"]] == [2, 2, 2, 2]
    checkout = Path(harmonia.__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert manifest["harmonia_git_commit"].split("+")[0] == head


def test_a_damaged_cached_twin_is_written_again(faulty, toy_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "cache"))
    finished_run(tmp_path, toy_recipe, capsys)
    (twin,) = (tmp_path / "cache" / "twins").iterdir()
    (twin / "toy.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"harmonia: warning: the cached toy twin in {twin} is damaged; writing it again" in out
    assert (twin / "toy.npz").stat().st_size > 100


def test_a_model_that_cannot_do_the_cohorts_task_is_exit_2_before_training(faulty, toy_recipe, tmp_path, capsys):
    toy_recipe["cohort"]["plugin"] = "toy_dynamic"
    path = recipe_file(tmp_path, toy_recipe, model={"plugin": "toy_classifier"})
    assert main(["run", path, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.plugin: 'toy_classifier' cannot do segmentation (cohort toy_dynamic)" in err[0]
    assert not (tmp_path / "run" / "results.csv").exists()


def test_save_models_keeps_each_cells_selected_model_for_harmonia_load_model(faulty, toy_recipe, tmp_path, capsys):
    toy_recipe["train"]["save_models"] = True
    run_dir = finished_run(tmp_path, toy_recipe, capsys)
    saved = sorted(p.name for p in (run_dir / "models").glob("*.pt"))
    assert saved == ["sweep0-seed0-A.pt", "sweep0-seed0-B.pt", "sweep0-seed1-A.pt", "sweep0-seed1-B.pt"]
    model = harmonia.load_model(run_dir / "models" / "sweep0-seed1-B.pt", registry=faulty)
    assert model.name == "toynet" and model.params.width == 4


def test_a_read_only_run_folder_is_one_line_and_exit_2(faulty, toy_recipe, tmp_path, capsys, monkeypatch):
    # root ignores file modes, so the read-only filesystem is simulated where harmonia asks about it
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK else real_access(path, mode))
    assert main(["run", recipe_file(tmp_path, toy_recipe), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"harmonia: error: {tmp_path / 'run'}: the run folder is not writable"
