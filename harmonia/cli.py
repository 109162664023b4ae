"""The ``harmonia`` command: run, list, validate, synth, report.

Exit status: 0 success, 2 bad input (one line on stderr naming the file and what is wrong, no
traceback), 1 internal error, 130 interrupted (finished cells are kept; ``run --resume`` goes on).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from harmonia.errors import InputError

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
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a recipe field (repeatable), e.g. --set train.epochs=5")
    run.add_argument("--out", help="run folder (default runs/<recipe name>/<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish the missing cells of an interrupted run")
    run.add_argument("--quiet", action="store_true", help="print only the final table")

    listing = sub.add_parser("list", help="list installed plugins")
    listing.add_argument("--kind", choices=["cohort", "model", "mitigation", "evaluator"])
    listing.add_argument("--verbose", action="store_true", help="also show every parameter with its default")

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

    report = sub.add_parser("report", help="(re)write report.md and figures/ of a run folder")
    report.add_argument("run_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"harmonia: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("harmonia: interrupted; finished cells are saved (harmonia run --resume RUN_DIR finishes the rest)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("harmonia: internal error (the traceback above is for a bug report)", file=sys.stderr)
        return EXIT_INTERNAL


def _say(args: argparse.Namespace):
    return (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))


def cmd_run(args: argparse.Namespace) -> int:
    from harmonia import runner
    from harmonia.report import console_table, gap_comparison

    if bool(args.recipe) == bool(args.resume):
        raise InputError("run: give either a RECIPE or --resume RUN_DIR")
    if args.resume and (args.overrides or args.out):
        raise InputError("run --resume: --set and --out do not apply; the run folder's recipe.yaml is used")
    if args.resume:
        result = runner.resume(args.resume, progress=_say(args))
    else:
        result = runner.run(args.recipe, args.overrides, args.out, progress=_say(args))
    results = result.results
    synthetic = (results["data"] == "synthetic").any() if not results.empty else False
    print()
    print(f"Results{' (SYNTHETIC data)' if synthetic else ''}:")
    print(console_table(results))
    if not results.empty:
        print()
        for line in gap_comparison(results):
            print(line)
    print(f"\nrun folder: {result.path}  (report: {result.path / 'report.md'})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from harmonia.registry import default_registry

    registry = default_registry()
    for entry in registry.entries(args.kind):
        print(f"{entry.name:<20} {entry.kind:<11} {entry.source.distribution} {entry.source.version:<8} {entry.description}")
        if args.verbose:
            for field_name, field in entry.cls.Params.model_fields.items():
                default = field.get_default(call_default_factory=True)
                note = f"  {field.description}" if field.description else ""
                print(f"    {field_name} = {default!r}{note}")
    for (kind, name), entries in sorted(registry.clashes.items()):
        if args.kind in (None, kind):
            sources = " and ".join(str(e.source) for e in entries)
            print(f"{name:<20} {kind:<11} CLASH: provided by {sources}")
    for failure in registry.failures:
        print(f"{failure.entry_point:<20} {'?':<11} FAILED to load from {failure.source}: {failure.error}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from harmonia.recipe import load_recipe

    experiment = load_recipe(args.recipe, args.overrides)
    cells = sum(p.recipe.train.seeds for p in experiment.points)
    print(f"{args.recipe}: valid ({len(experiment.points)} sweep point(s), {cells} seed run(s) per training domain)")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from harmonia.api import TwinSettings
    from harmonia.datasource import write_labelled_twin
    from harmonia.registry import default_registry

    entry = default_registry().get("cohort", args.cohort)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: folder is not empty; choose a new or empty folder for the twin")
    given = {"patients": args.patients, "seed": args.seed, "strength": args.strength, "difficulty": args.difficulty}
    try:
        settings = TwinSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise InputError(f"synth: {str(exc).splitlines()[0]}: {str(exc).splitlines()[-1].strip()}") from None
    out.mkdir(parents=True, exist_ok=True)
    write_labelled_twin(entry.cls, out, settings)
    print(f"wrote the SYNTHETIC twin of {args.cohort} ({settings.patients} patients per domain) to {out}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from harmonia.report import write_report

    print(write_report(Path(args.run_dir)))
    return EXIT_OK


COMMANDS = {"run": cmd_run, "list": cmd_list, "validate": cmd_validate, "synth": cmd_synth, "report": cmd_report}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
