"""Cells side by side: local worker processes and Ray give the sequential run's results, survive a killed worker
or driver, and report failures as the sequential run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from harmonia import datasource, runner
from harmonia.api import TwinSettings
from harmonia.cli import main
from harmonia.errors import CellFailed, InputError
from harmonia.executors import _start_method, threads_per_cell, write_twins_side_by_side
from harmonia.progress import RunClock
from harmonia.recipe import CohortSpec
from harmonia.registry import default_registry
from harmonia.settings import ExecutionSpec

TESTS = Path(__file__).parent


@pytest.fixture
def recipe(toy_recipe):
    """The toy recipe, one thread per cell (so every executor computes bit for bit alike), a plain and a scaled point."""
    toy_recipe["train"]["threads"] = 1
    toy_recipe["sweep"] = {"mitigations": [[], [{"plugin": "scale_batches", "params": {"factor": 0.5}}]]}
    return toy_recipe


def _text(run_dir: Path, name: str) -> str:
    return (run_dir / name).read_text()


def test_workers_and_ray_write_the_sequential_results_byte_for_byte(recipe, registry, tmp_path):
    pytest.importorskip("ray")
    sequential = runner.run(recipe, out=tmp_path / "w1", registry=registry)
    two = runner.run(recipe, out=tmp_path / "w2", registry=registry, execution={"workers": 2})
    ray_run = runner.run(recipe, out=tmp_path / "ray", registry=registry, execution={"executor": "ray", "workers": 2})
    for run in (two, ray_run):
        assert _text(run.path, "results.csv") == _text(sequential.path, "results.csv")
        assert _text(run.path, "history.csv") == _text(sequential.path, "history.csv")
        assert _text(run.path, "summary.csv") == _text(sequential.path, "summary.csv")
    cells = json.loads(_text(two.path, "manifest.json"))["cells"]
    assert len(cells) == 2 * 2 * 2  # points x seeds x training domains, each once
    assert all(cell["seconds"] >= 0 for cell in cells)
    log = _text(two.path, "harmonia.log")
    assert "[8/8] " in log and "done)" in log  # one progress line per cell, the last saying the run is done
    assert "epoch 1: training loss" in log  # the workers' epoch lines reach the driver's log


def _killing(recipe: dict, marker: Path) -> dict:
    killer = {"plugin": "kill_worker", "params": {"marker": str(marker), "driver_pid": os.getpid()}}
    recipe["sweep"] = {"mitigations": [[killer], [killer, {"plugin": "scale_batches", "params": {"factor": 0.5}}]]}
    return recipe


def test_a_killed_worker_s_cells_are_computed_again(recipe, registry, tmp_path):
    marker = tmp_path / "killed"
    recipe = _killing(recipe, marker)
    run = runner.run(recipe, out=tmp_path / "run", registry=registry, execution={"workers": 2})
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker did die
    # the same recipe in this process, the marker present: nothing is killed, nothing differs
    reference = runner.run(recipe, out=tmp_path / "reference", registry=registry)
    assert _text(run.path, "results.csv") == _text(reference.path, "results.csv")
    keys = [
        (c["sweep_id"], c["seed"], c["train_domain"]) for c in json.loads(_text(run.path, "manifest.json"))["cells"]
    ]
    assert len(keys) == len(set(keys)) == 8
    assert "a worker process died" in _text(run.path, "harmonia.log")


def test_ray_starts_a_killed_worker_s_cell_again(recipe, registry, tmp_path):
    pytest.importorskip("ray")
    marker = tmp_path / "killed"
    recipe = _killing(recipe, marker)
    run = runner.run(recipe, out=tmp_path / "run", registry=registry, execution={"executor": "ray", "workers": 2})
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    reference = runner.run(recipe, out=tmp_path / "reference", registry=registry)
    assert _text(run.path, "results.csv") == _text(reference.path, "results.csv")
    assert len(json.loads(_text(run.path, "manifest.json"))["cells"]) == 8


def test_without_retries_the_killed_cell_is_left_for_resume(recipe, registry, tmp_path):
    marker = tmp_path / "killed"
    recipe = _killing(recipe, marker)
    recipe["execution"] = {"retries": 0}
    with pytest.raises(CellFailed, match="the worker process died once"):
        runner.run(recipe, out=tmp_path / "run", registry=registry, execution={"workers": 2})
    manifest = json.loads(_text(tmp_path / "run", "manifest.json"))
    assert manifest["status"] == "failed"
    finished = len(manifest.get("cells", []))
    assert finished < 8
    resumed = runner.resume(tmp_path / "run", registry=registry, execution={"workers": 2})
    reference = runner.run(recipe, out=tmp_path / "reference", registry=registry)
    assert _text(resumed.path, "results.csv") == _text(reference.path, "results.csv")


def test_a_failing_cell_stops_the_run_naming_the_plugin_and_keeps_finished_cells(toy_recipe, registry, tmp_path):
    toy_recipe["train"]["threads"] = 1
    toy_recipe["sweep"] = {"mitigations": [[], [{"plugin": "broken_cell"}]]}
    with pytest.raises(CellFailed, match=r"in mitigation 'broken_cell': ValueError: this mitigation is broken"):
        runner.run(toy_recipe, out=tmp_path / "run", registry=registry, execution={"workers": 2})
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results["mitigations"]) == {"none"} and len(results) > 0
    assert "this mitigation is broken on purpose" in _text(tmp_path / "run", "harmonia.log")  # the traceback


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import toy_plugins
from harmonia import datasource, runner
from harmonia.api import TwinSettings
from harmonia.registry import Registry

if __name__ == "__main__":
    recipe = {recipe!r}
    runner.run(recipe, out=sys.argv[1], registry=Registry.from_entry_points(extra=[toy_plugins]),
               execution={{"workers": 2}})
"""


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_driver_s_run_resumes_to_the_uninterrupted_results(recipe, registry, tmp_path):
    recipe["sweep"] = {"mitigations": [[{"plugin": "slow_down", "params": {"seconds": 1.0}}]]}
    recipe["train"]["seeds"] = 3
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS), recipe=recipe)))
    out = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, str(script), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("cells"):
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read().decode()
    workers = [p for p in _children(driver.pid) if "python" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "worker processes outlived the killed driver"
    done = len(json.loads((out / "manifest.json").read_text())["cells"])
    assert 0 < done < 6
    resumed = runner.resume(out, registry=registry, execution={"workers": 2})
    reference = runner.run(recipe, out=tmp_path / "reference", registry=registry)
    assert _text(resumed.path, "results.csv") == _text(reference.path, "results.csv")


def test_the_run_clock_estimates_the_time_left_from_the_cells_finished(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    clock = RunClock(4)
    assert clock.status() == "run 0m00s, about ? left"
    now[0] += 30
    clock.tick()
    assert clock.status() == "run 0m30s, about 1m30s left"
    now[0] += 3600
    for _ in range(3):
        clock.tick()
    assert clock.status() == "run 1h00m, done"


def test_threads_are_shared_out_among_the_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads_per_cell(ExecutionSpec(workers=1), None) == 8
    assert threads_per_cell(ExecutionSpec(workers=3), None) == 2
    assert threads_per_cell(ExecutionSpec(workers=16), None) == 1
    assert threads_per_cell(ExecutionSpec(workers=4), 3) == 3  # train.threads wins
    assert threads_per_cell(ExecutionSpec(executor="ray", cpus_per_cell=2), None) == 2


def test_ray_missing_is_a_one_line_input_error(recipe, registry, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'harmonia\[ray\]'"):
        runner.run(recipe, out=tmp_path / "run", registry=registry, execution={"executor": "ray"})


def test_execution_settings_change_no_fingerprint_and_cannot_be_swept(recipe, registry, tmp_path):
    run = runner.run(recipe, out=tmp_path / "run", registry=registry)
    before = json.loads(_text(run.path, "manifest.json"))["recipe_sha256"]
    runner.resume(run.path, registry=registry, execution={"workers": 3})  # allowed: nothing left, nothing refused
    assert json.loads(_text(run.path, "manifest.json"))["recipe_sha256"] == before
    recipe["sweep"]["execution.workers"] = [1, 2]
    with pytest.raises(InputError, match="cannot be swept"):
        runner.run(recipe, out=tmp_path / "swept", registry=registry)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "must be at least 1"),
        (["--workers", "two"], "is not a whole number"),
        (["--executor", "dask"], "invalid choice"),
    ],
)
def test_bad_execution_flags_exit_2(argv, message, capsys):
    assert main(["run", "recipes/mnms_dann.yaml", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_twins_are_written_side_by_side_as_the_driver_would_write_them(tmp_path, monkeypatch, caplog):
    registry = default_registry()
    specs = [CohortSpec(plugin=name, synthetic={"patients": 2}) for name in ("xray_chest", "mri_prostate")]
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "stale"))
    with ProcessPoolExecutor(1, mp_context=_start_method()) as pool:  # a forkserver that knows the stale cache
        pool.submit(os.getpid).result()
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "side"))
    with caplog.at_level("INFO", logger="harmonia"):
        write_twins_side_by_side(specs, registry, ExecutionSpec(workers=2))
    assert "writing 2 SYNTHETIC twins, 2 at a time: xray_chest, mri_prostate" in caplog.text
    side = [datasource.twin_folder(registry.get("cohort", s.plugin).cls, s.synthetic) for s in specs]
    assert all(datasource.is_intact(folder) for folder in side)
    assert not (tmp_path / "stale").exists()  # the workers wrote where the driver's settings say, not the server's

    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "driver"))
    for spec, folder in zip(specs, side):
        driver = datasource.ensure_twin(registry.get("cohort", spec.plugin).cls, TwinSettings(patients=2))
        marker = datasource.COMPLETE_MARKER
        assert json.loads((driver / marker).read_text()) == json.loads((folder / marker).read_text())

    caplog.clear()  # one worker, or nothing missing: the driver writes (or finds) them itself
    write_twins_side_by_side(specs, registry, ExecutionSpec(workers=1))
    write_twins_side_by_side(specs, registry, ExecutionSpec(workers=2))
    assert "SYNTHETIC twins" not in caplog.text
