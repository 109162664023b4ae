"""What `harmonia run` prints: progress lines by default, only errors and the final table with --quiet,
per-epoch lines with --verbose; the library itself only logs."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

import harmonia
import harmonia_plugins
from harmonia.cli import main


def run(tmp_path, toy_recipe, capsys, *flags):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**toy_recipe, "train": {**toy_recipe["train"], "seeds": 1}}))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), *flags]) == 0
    return capsys.readouterr().out


def test_default_output_has_a_line_per_cell_and_the_table(registry, toy_recipe, tmp_path, capsys):
    out = run(tmp_path, toy_recipe, capsys)
    assert "[1/2] sweep 0 (none) seed 0 train A: same-domain pixel_accuracy" in out
    assert "Results (SYNTHETIC data):" in out and "epoch 1:" not in out


def test_quiet_prints_only_the_final_table(registry, toy_recipe, tmp_path, capsys):
    out = run(tmp_path, toy_recipe, capsys, "--quiet")
    assert "[1/2]" not in out and "cells (" not in out and "SYNTHETIC twin data" not in out
    assert "Results (SYNTHETIC data):" in out and "same-domain pixel_accuracy" in out


def test_verbose_adds_a_line_per_epoch(registry, toy_recipe, tmp_path, capsys):
    out = run(tmp_path, toy_recipe, capsys, "--verbose")
    assert "  epoch 0: training loss" in out and "  epoch 1: training loss" in out


def test_the_run_folder_keeps_a_log_of_the_run(registry, toy_recipe, tmp_path, capsys):
    run(tmp_path, toy_recipe, capsys, "--quiet")
    log = (tmp_path / "run" / "harmonia.log").read_text()
    assert "2 cells (0 already done)" in log and "epoch 1: training loss" in log


def test_library_code_never_prints():
    """Only the command line prints; the core and the plugins log (so --quiet and library users are in control)."""
    printing = []
    for package in (Path(harmonia.__file__).parent, Path(harmonia_plugins.__file__).parent):
        for path in package.rglob("*.py"):
            if path.name == "cli.py" and package.name == "harmonia":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                    printing.append(f"{path}:{node.lineno}")
    assert printing == []
