"""The ``harmonia`` command: run, compare, list, validate, synth, report, augment-preview, standardize.

Exit status: 0 success, 2 bad input (one line on stderr naming the file and what is wrong, no
traceback), 1 internal error, 130 interrupted (finished cells are kept; ``run --resume`` goes on).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from harmonia.errors import CellFailed, InputError, RunInterrupted

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are bad input (exit status 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harmonia", description="Measure and mitigate scanner domain shift in medical imaging.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a recipe's cross-scanner experiment")
    run.add_argument("recipe", nargs="?", help="recipe YAML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe field (repeatable), e.g. --set train.epochs=5",
    )
    run.add_argument("--out", help="run folder (default runs/<recipe name>/<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish the missing cells of an interrupted run")
    loudness = run.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="print only errors and the final table")
    loudness.add_argument("--verbose", action="store_true", help="also print a line per training epoch")
    run.add_argument("--debug", action="store_true", help="print the traceback when a cell fails")
    add_execution_options(run)

    compare = sub.add_parser(
        "compare", help="rank every installed mitigation against the plain model on chosen cohorts (a leaderboard)"
    )
    compare.add_argument(
        "--cohorts",
        required=True,
        type=_names,
        metavar="A,B",
        help="cohorts to rank on, of one task kind (e.g. mnms,ct_recon)",
    )
    compare.add_argument(
        "--mitigations",
        default="all",
        metavar="all|A,B",
        help="'all' (default): every installed mitigation, third-party ones too; or a comma-separated list",
    )
    compare.add_argument("--quick", action="store_true", help="small twins, models and schedules (minutes on a CPU)")
    compare.add_argument("--probe", action="store_true", help="also score each method's remaining vendor signal")
    compare.add_argument("--out", help="run folder (default runs/leaderboard/<timestamp>); resume it with run --resume")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    compare_loudness = compare.add_mutually_exclusive_group()
    compare_loudness.add_argument("--quiet", action="store_true", help="print only errors and the final tables")
    compare_loudness.add_argument("--verbose", action="store_true", help="also print a line per training epoch")
    add_execution_options(compare)

    listing = sub.add_parser("list", help="list installed plugins, and those that failed to load with the reason")
    listing.add_argument("pattern", nargs="?", default="*", help="only names that match this glob, e.g. 'ct_*'")
    listing.add_argument("--kind", choices=["cohort", "model", "mitigation", "evaluator"])
    listing.add_argument(
        "--verbose",
        action="store_true",
        help="also show every parameter: type, default, bounds or choices, description",
    )

    validate = sub.add_parser("validate", help="validate a recipe without running it")
    validate.add_argument("recipe")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    synth = sub.add_parser("synth", help="write a cohort's synthetic twin in the real dataset's layout")
    synth.add_argument("cohort")
    synth.add_argument("--out", required=True, help="folder to write into (must be empty or new)")
    synth.add_argument("--patients", type=int, help="patients per scanner domain")
    synth.add_argument("--seed", type=int, help="seed of the phantoms and signatures")
    synth.add_argument("--strength", type=float, help="scanner-signature strength (0 = no vendor effect)")
    synth.add_argument("--difficulty", type=float, help="task difficulty, 0 (easy) to 1 (hard)")
    synth.add_argument(
        "--components",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="comma-separated signature components that differ between vendors (default all: "
        "contrast,psf,bias,transfer,noise)",
    )

    report = sub.add_parser("report", help="(re)write report.md and figures/ of a run folder")
    report.add_argument("run_dir")

    preview = sub.add_parser(
        "augment-preview", help="draw one training item and random draws of each augmenting mitigation (a PNG)"
    )
    preview.add_argument("recipe", help="recipe YAML file (its first sweep point is shown)")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    preview.add_argument("--seed", type=int, default=0, help="seed of the draws (the same seed, the same figure)")
    preview.add_argument("--samples", type=int, default=4, help="draws per mitigation (default 4)")

    standardize = sub.add_parser(
        "standardize", help="apply a trained CT standardizer to DICOM series and write derived DICOM series"
    )
    standardize.add_argument("checkpoint", help="the standardizer's .pt file (its .json sidecar beside it)")
    standardize.add_argument("input", help="a DICOM series folder, or a folder of series")
    standardize.add_argument("--out", required=True, help="folder for the derived series (never inside the input)")
    standardize.add_argument("--overwrite", action="store_true", help="replace derived series already in --out")
    standardize.add_argument("--device", default="cpu", help="torch device to run the generator on (cpu, cuda)")
    return parser


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--executor``, ``--ray-address`` and ``--tracking-uri``: how cells run and where their figures
    are copied (the recipe's ``execution:`` and ``tracking:``, overridden)."""
    parser.add_argument(
        "--workers", type=_positive, metavar="N", help="run N cells side by side (local worker processes, or Ray CPUs)"
    )
    parser.add_argument("--executor", choices=["local", "ray"], help="local worker processes, or Ray (harmonia[ray])")
    parser.add_argument(
        "--ray-address", metavar="ADDRESS", help="a running Ray cluster ('auto' on a cluster node, 'ray://host:10001')"
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="copy each cell's figures to this MLflow store or server (harmonia[mlflow]); sets tracking: mlflow",
    )


def tracking_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The tracking settings given on the command line (``--tracking-uri``), else none."""
    return {"backend": "mlflow", "uri": args.tracking_uri} if args.tracking_uri else {}


def execution_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The execution settings given on the command line (the rest come from the recipe)."""
    given = {"workers": args.workers, "executor": args.executor, "ray_address": args.ray_address}
    if args.ray_address and not args.executor:
        given["executor"] = "ray"
    return {key: value for key, value in given.items() if value is not None}


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    args = None
    console = _ConsoleLog()
    try:
        args = build_parser().parse_args(argv)
        console.attach(_console_level(args))
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"harmonia: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        # the environment refused: a full disk, a read-only or missing folder, a path that is a file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"harmonia: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    except CellFailed as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc.__cause__ or exc)
        print(
            f"harmonia: error: {exc} (finished cells are kept; the traceback is in {exc.run_dir}/harmonia.log, "
            f"--debug prints it; harmonia run --resume {exc.run_dir} retries)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    except RunInterrupted as exc:
        print(
            f"harmonia: interrupted; finished cells are saved (harmonia run --resume {exc.run_dir} finishes the rest)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("harmonia: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("harmonia: internal error (the traceback above is for a bug report)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        console.detach()


class _ConsoleLog:
    """The console side of harmonia's logging: plain lines on stdout, warnings and errors marked."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None

    def attach(self, level: int) -> None:
        self.handler = logging.StreamHandler(sys.stdout)
        self.handler.setLevel(level)
        self.handler.setFormatter(_ConsoleFormat())
        self.handler.addFilter(lambda record: record.exc_info is None)  # tracebacks go to the run's log file
        logger = logging.getLogger("harmonia")
        logger.addHandler(self.handler)
        logger.setLevel(level)

    def detach(self) -> None:
        if self.handler is not None:
            logging.getLogger("harmonia").removeHandler(self.handler)
            self.handler = None


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"harmonia: {record.levelname.lower()}: {message}"


def _console_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.ERROR
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def cmd_run(args: argparse.Namespace) -> int:
    from harmonia import runner

    if bool(args.recipe) == bool(args.resume):
        raise InputError("run: give either a RECIPE or --resume RUN_DIR")
    if args.resume and (args.overrides or args.out):
        raise InputError("run --resume: --set and --out do not apply; the run folder's recipe.yaml is used")
    progress, execution, tracking = _progress(args), execution_overrides(args), tracking_overrides(args)
    if args.resume:
        result = runner.resume(args.resume, progress=progress, execution=execution, tracking=tracking)
    else:
        result = runner.run(
            args.recipe, args.overrides, args.out, progress=progress, execution=execution, tracking=tracking
        )
    _print_results(result)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """Build the leaderboard recipe, say which mitigations are left out and why, run it, print the ranking."""
    import pandas as pd

    from harmonia import leaderboard, runner
    from harmonia.registry import default_registry

    mitigations = None if args.mitigations.strip() == "all" else _names(args.mitigations)
    recipe, skipped = leaderboard.leaderboard_recipe(
        args.cohorts, mitigations, default_registry(), quick=args.quick, probe=args.probe
    )
    for reason in skipped:
        logging.getLogger("harmonia").warning("leaving out %s", reason)
    if len(recipe["sweep"]["mitigations"]) < 2:
        raise InputError("compare: no mitigation is left to rank (see the reasons above)")
    result = runner.run(
        recipe,
        args.overrides,
        args.out,
        progress=_progress(args),
        execution=execution_overrides(args),
        tracking=tracking_overrides(args),
    )
    _print_results(result)
    overall = result.path / "leaderboard_overall.csv"
    if overall.exists():
        print("\nMean rank over the cohorts (best first; per-cohort ranks, CIs and verdicts in the report):")
        print(pd.read_csv(overall).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return EXIT_OK


def _progress(args: argparse.Namespace) -> Any:
    """A bar over each cell's epochs on a terminal (unless --quiet or --verbose), else log lines only."""
    from harmonia.progress import Progress, TerminalProgress

    return TerminalProgress() if sys.stderr.isatty() and not (args.quiet or args.verbose) else Progress()


def _print_results(result: Any) -> None:
    """The run's console summary and where its folder and report are."""
    from harmonia.report import console_lines
    from harmonia.tables import provenance

    results = result.results
    print()
    print(f"Results ({provenance(results, result.manifest).label}):")
    for line in console_lines(results, result.manifest):
        print(line)
    print(f"\nrun folder: {result.path}  (report: {result.path / 'report.md'})")


def cmd_list(args: argparse.Namespace) -> int:
    """The plugins, then those that failed to load, clash or were left out, each with its reason.

    Exit status 0 whatever is broken: a broken plugin only fails a recipe that uses it.
    """
    from harmonia.plugin_params import describe_params
    from harmonia.registry import default_registry

    registry = default_registry()

    def shown(kind: str | None, name: str) -> bool:
        return args.kind in (None, kind) and fnmatch.fnmatchcase(name, args.pattern)

    entries = registry.entries(args.kind, args.pattern)
    header = ("NAME", "KIND", "DISTRIBUTION", "VERSION", "DESCRIPTION")
    rows = [(e.name, e.kind, e.source.distribution, e.source.version, e.description) for e in entries]
    lines = _aligned([header, *rows])
    print(lines[0])
    for entry, line in zip(entries, lines[1:], strict=True):
        print(line)
        if args.verbose:
            params = describe_params(entry.cls.Params)
            cells = [(p.name, p.type, f"= {_clipped(p.default)}", p.rules, p.description) for p in params]
            for param_line in _aligned(cells):
                print(f"    {param_line}")
    if not entries:
        print("(no plugins match)")

    failures = [
        (f.name, f.kind or "?", f"from {f.source}", f.error)
        for f in registry.failures
        if shown(f.kind or args.kind, f.name)
    ]
    _section("Failed to load (a recipe that uses one fails with this reason):", failures)
    clashes = [
        (name, kind, "provided by " + " and ".join(str(e.source) for e in providers))
        for (kind, name), providers in sorted(registry.clashes.items())
        if shown(kind, name)
    ]
    _section("Name clashes (a name must be unique per kind; uninstall all but one):", clashes)
    left_out = [(s.name, s.kind or "?", s.reason) for s in registry.left_out if shown(s.kind or args.kind, s.name)]
    _section("Left out by the environment:", left_out)
    twice = [(name, why) for name, why in registry.registered_twice if shown(args.kind, name)]
    _section("Registered twice (harmless; the plugins above are loaded once):", twice)
    return EXIT_OK


def _section(title: str, rows: list[tuple[str, ...]]) -> None:
    if rows:
        print(f"\n{title}")
        for line in _aligned(rows):
            print(f"  {line}")


def _clipped(text: str, limit: int = 32) -> str:
    """A long value (a list of regular expressions, say) cut short so the columns after it stay in view."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines of columns two spaces apart, each column as wide as its widest cell (the last unpadded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
    return [line.rstrip() for line in lines]


def cmd_validate(args: argparse.Namespace) -> int:
    from harmonia.recipe import load_recipe

    experiment = load_recipe(args.recipe, args.overrides)
    cells = sum(p.recipe.train.seeds for p in experiment.points)
    print(f"{args.recipe}: valid ({len(experiment.points)} sweep point(s), {cells} seed run(s) per training domain)")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harmonia.api import TwinSettings
    from harmonia.datasource import write_labelled_twin
    from harmonia.registry import default_registry

    entry = default_registry().get("cohort", args.cohort)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: folder is not empty; choose a new or empty folder for the twin")
    given = {
        "patients": args.patients,
        "seed": args.seed,
        "strength": args.strength,
        "difficulty": args.difficulty,
        "components": args.components,
    }
    try:
        settings = TwinSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        # the option and the rule only: pydantic's own text spans lines and ends in a help URL
        error = exc.errors(include_url=False)[0]
        raise InputError(f"synth --{error['loc'][0]}: {error['msg']}") from None
    out.mkdir(parents=True, exist_ok=True)
    write_labelled_twin(entry.cls, out, settings)
    print(f"wrote the SYNTHETIC twin of {args.cohort} ({settings.patients} patients per domain) to {out}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from harmonia.report import write_report

    print(write_report(Path(args.run_dir)))
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from harmonia.augment_preview import write_preview

    path, provenance = write_preview(args.recipe, args.out, args.overrides, args.seed, args.samples)
    print(f"wrote the augmentation preview of {args.recipe} ({provenance}) to {path}")
    return EXIT_OK


def cmd_standardize(args: argparse.Namespace) -> int:
    from harmonia.apply_standardizer import standardize_dicom

    result = standardize_dicom(
        Path(args.checkpoint),
        Path(args.input),
        Path(args.out),
        overwrite=args.overwrite,
        device=args.device,
        on_series=lambda name: print(f"standardizing series {name}", flush=True),
    )
    for line in result.lines():
        print(line)
    print(f"{len(result.written)} series written to {args.out}, {len(result.skipped)} skipped")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "list": cmd_list,
    "validate": cmd_validate,
    "synth": cmd_synth,
    "report": cmd_report,
    "augment-preview": cmd_augment_preview,
    "standardize": cmd_standardize,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
