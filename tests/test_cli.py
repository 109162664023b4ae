"""The `harmonia` command: exit statuses, one-line errors, list, validate, synth, run and report."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import yaml

from harmonia.cli import main


def write_recipe(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_recipe_is_one_line_and_exit_2_from_the_installed_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncohort: {plugin: mnms}\nmodel: {plugin: unet2d}\nevaluate: [dice]\ntrain: {epochs: -3}\n")
    done = subprocess.run([sys.executable, "-m", "harmonia.cli", "validate", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"harmonia: error: {bad}: train.epochs: Input should be greater than or equal to 1"
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2(capsys):
    assert main(["run"]) == 2
    assert "give either a RECIPE or --resume RUN_DIR" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_validate(registry, toy_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path, toy_recipe)
    assert main(["validate", str(path), "--set", "train.seeds=3"]) == 0
    assert "valid (1 sweep point(s), 3 seed run(s)" in capsys.readouterr().out


def test_list_shows_kind_distribution_and_parameters(registry, capsys):
    assert main(["list", "--kind", "model", "--verbose"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("toynet"))
    assert "model" in line and "local" in line and "A three-layer conv net for tests." in line
    assert "    width  int  = 8  >= 1  channels" in out
    assert "pixel_accuracy" not in out  # filtered by kind


def test_list_reports_failed_plugins(registry, capsys):
    from harmonia.registry import Failure, Source

    ghost = Failure(("ghost",), Source("ghost_mod", "ghost-dist", "1.0"), "ImportError: no torch_ghost")
    registry.failures.append(ghost)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Failed to load" in out
    assert "  ghost  ?  from ghost-dist 1.0 (ghost_mod)  ImportError: no torch_ghost" in out


def test_synth_writes_the_twin_and_refuses_a_full_folder(registry, tmp_path, capsys):
    out = tmp_path / "twin"
    assert main(["synth", "toy", "--out", str(out), "--patients", "3", "--seed", "2", "--components", "noise,psf"]) == 0
    assert (out / "toy.npz").exists() and "SYNTHETIC" in capsys.readouterr().out
    label = (out / "SYNTHETIC_TWIN.txt").read_text()
    assert label.startswith("SYNTHETIC data") and '"components":["psf","noise"]' in label
    assert main(["synth", "toy", "--out", str(tmp_path / "blur"), "--components", "blur"]) == 2
    assert "synth --components" in capsys.readouterr().err
    assert main(["synth", "toy", "--out", str(tmp_path / "hard"), "--difficulty", "1.5"]) == 2
    assert main(["synth", "toy", "--out", str(out)]) == 2
    assert main(["synth", "toy", "--out", str(tmp_path / "x"), "--patients", "1"]) == 2


def test_run_prints_the_table_and_resume_of_a_complete_run_does_nothing(registry, toy_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path, toy_recipe)
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run_dir), "--set", "train.seeds=1"]) == 0
    out = capsys.readouterr().out
    assert "Results (SYNTHETIC data):" in out
    assert "same-domain pixel_accuracy" in out and "Setting none: mean Δ" in out
    before = pd.read_csv(run_dir / "results.csv")
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert "2 cells (2 already done)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(before, pd.read_csv(run_dir / "results.csv"))


def test_run_refuses_an_existing_folder(registry, toy_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path, toy_recipe)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_configured_but_missing_real_data_is_an_input_error(registry, toy_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARMONIA_DATA", str(tmp_path / "data"))
    path = write_recipe(tmp_path, toy_recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'toy'}: the real toy dataset is configured ($HARMONIA_DATA/toy)" in err
    assert "it is made by the tests" in err


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a harmonia run folder" in capsys.readouterr().err
