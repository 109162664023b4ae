"""Where a run's cells are computed: in the harmonia process, in local worker processes, or as Ray tasks.

Whatever the executor, the driver (the ``harmonia run`` process) alone writes the run folder: a
worker computes one whole cell from plain data (:class:`CellJob`) and returns its rows, history and
files, and the driver saves each cell as it comes back, so a crash loses at most the cells in
flight. Cells are seeded from what they are, not from where or when they run, so any executor gives
the results of the sequential run (bit for bit when the torch threads per cell are the same; see
:func:`threads_per_cell`).

A worker that dies (SIGKILL, out of memory) breaks only its cells in flight: they are started again up
to ``execution.retries`` times, then left for ``--resume``. Local workers are started with *spawn*
(fork is unsafe after torch has started its threads), ignore Ctrl-C (the driver stops them), exit
when the driver dies, and send their log records (``--verbose`` epoch lines) to the driver.
"""

from __future__ import annotations

import importlib
import logging
import logging.handlers
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harmonia import datasource
from harmonia.api import Cohort, TwinSettings
from harmonia.errors import CellFailed, InputError, one_line
from harmonia.paths import data_home
from harmonia.protocol import (
    Cell,
    CellDone,
    CohortData,
    cell_failure_message,
    compute_cell,
    describe_cell,
    load_cohort,
)
from harmonia.recipe import CohortSpec, SweepPoint, validate_point
from harmonia.registry import FIRST_PARTY_MODULES, Registry
from harmonia.settings import ExecutionSpec

log = logging.getLogger(__name__)

#: seconds between a worker's checks that the driver is still alive
PARENT_CHECK_S = 0.5


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to compute one cell, as plain data, so that it travels to any process or machine."""

    point_id: int
    values: dict[str, Any]
    recipe: dict[str, Any]
    seed: int
    train_domain: str
    threads: int
    #: modules the driver's registry got by hand (third-party plugins not installed), imported again by the worker
    plugin_modules: tuple[str, ...]

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.point_id, self.seed, self.train_domain)


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised in a worker: the driver's one-line message, the traceback text, and whether it was bad input."""

    key: tuple[int, int, str]
    message: str
    traceback: str
    input_error: bool


Save = Callable[[Cell, CellDone], None]


def threads_per_cell(execution: ExecutionSpec, threads: int | None) -> int:
    """torch's intra-op threads in each cell: ``train.threads`` when set, else the cores shared out among the cells
    that run at once (local workers), or the cell's CPU request (Ray), so that N workers never oversubscribe the cores."""
    if threads is not None:
        return threads
    if execution.executor == "ray":
        return max(1, int(execution.cpus_per_cell))
    return max(1, (os.cpu_count() or 1) // execution.workers)


def make_job(cell: Cell, execution: ExecutionSpec, registry: Registry) -> CellJob:
    recipe = cell.point.recipe
    return CellJob(
        cell.point.id,
        cell.point.values,
        recipe.model_dump(mode="json"),
        cell.seed,
        cell.train_domain,
        threads_per_cell(execution, recipe.train.threads),
        tuple(registry.by_hand),
    )


# -- in the harmonia process ------------------------------------------------------------------------


class InProcessExecutor:
    """Cells one after another in the harmonia process, with the driver's loaded cohorts (``workers: 1``)."""

    def __init__(
        self,
        registry: Registry,
        data_of: Callable[[SweepPoint], CohortData],
        run_dir: Path,
        on_start: Callable[[Cell], Callable[[Any], None] | None],
    ):
        self.registry, self.data_of, self.run_dir, self.on_start = registry, data_of, run_dir, on_start

    def run(self, cells: list[Cell], save: Save) -> None:
        for cell in cells:
            on_epoch = self.on_start(cell)
            try:
                done = compute_cell(cell, self.data_of(cell.point), self.registry, on_epoch)
            except (InputError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise CellFailed(cell_failure_message(cell, exc, self.registry), self.run_dir) from exc
            save(cell, done)


# -- in worker processes (local or Ray): the worker side ----------------------------------------------

_registries: dict[tuple[str, ...], Registry] = {}
_cohorts: dict[str, CohortData] = {}


def compute_job(job: CellJob) -> CellDone | CellFailure:
    """Compute ``job`` in this (worker) process: the registry and each cohort are built once per process and kept."""
    cell: Cell | None = None
    registry: Registry | None = None
    try:
        registry = _worker_registry(job.plugin_modules)
        recipe = validate_point(job.recipe, registry)
        cell = Cell(SweepPoint(job.point_id, job.values, recipe), job.seed, job.train_domain)
        key = recipe.cohort.model_dump_json()
        if key not in _cohorts:
            _cohorts[key] = load_cohort(recipe.cohort, registry)
        torch.set_num_threads(job.threads)
        label = describe_cell(cell)
        return compute_cell(cell, _cohorts[key], registry, lambda e: _log_epoch(label, e))
    except InputError as exc:
        return CellFailure(job.key, str(exc), traceback.format_exc(), True)
    except Exception as exc:
        message = (
            cell_failure_message(cell, exc, registry)
            if cell is not None and registry is not None
            else f"cell (sweep {job.point_id}, seed {job.seed}, train {job.train_domain}) failed: {one_line(exc)}"
        )
        return CellFailure(job.key, message, traceback.format_exc(), False)


def _worker_registry(modules: tuple[str, ...]) -> Registry:
    if modules not in _registries:
        try:
            extra = [importlib.import_module(name) for name in modules]
        except ImportError as exc:
            raise InputError(
                f"a plugin module registered by hand cannot be imported in a worker process ({one_line(exc)}); "
                f"install it as a distribution (docs/plugins.md) or run with --workers 1"
            ) from None
        _registries[modules] = Registry.from_entry_points(extra=extra)
    return _registries[modules]


def _log_epoch(label: str, epoch: Any) -> None:
    score = "" if epoch.val_score is None else f", validation score {epoch.val_score:.4f}"
    log.debug("  %s epoch %d: training loss %.4f%s", label, epoch.epoch, epoch.train_loss, score)


def _start_worker(driver: int, records: Any, level: int, environment: dict[str, str]) -> None:
    """A local worker's set-up: the driver's harmonia settings, Ctrl-C is the driver's to handle, log records go to
    the driver, and the worker exits when the driver is gone (SIGKILLed), instead of computing cells nobody will
    save."""
    adopt_environment(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logger = logging.getLogger("harmonia")
    logger.handlers[:] = [logging.handlers.QueueHandler(records)]
    logger.setLevel(level)
    logger.propagate = False
    threading.Thread(target=_exit_with, args=(driver,), daemon=True).start()


def harmonia_environment() -> dict[str, str]:
    """The driver's environment variables that steer harmonia (``HARMONIA_*``: cache, data, salt; the XDG cache)."""
    return {k: v for k, v in os.environ.items() if k.startswith("HARMONIA_") or k == "XDG_CACHE_HOME"}


def adopt_environment(environment: dict[str, str]) -> None:
    """Make this worker's harmonia settings the driver's: a forkserver keeps the environment it started with, which
    an API user may have changed since (another ``HARMONIA_CACHE`` for the next run)."""
    for key in harmonia_environment().keys() - environment.keys():
        del os.environ[key]
    os.environ.update(environment)


def _exit_with(driver: int) -> None:
    """Exit once the driver is gone: seen as the driver missing, or as this process's parent changing (a forkserver
    exits with its driver, and its workers are then handed to another parent)."""
    parent = os.getppid()
    while os.getppid() == parent and _exists(driver):
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Redispatch(logging.Handler):
    """Hands a worker's log record to the driver's logger of the same name (console, harmonia.log)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


# -- the driver side ----------------------------------------------------------------------------------


class _Outcomes:
    """What came back from the workers: saves each finished cell, remembers the first failure, counts deaths."""

    def __init__(self, cells: list[Cell], save: Save, retries: int, run_dir: Path):
        self.by_key = {c.key: c for c in cells}
        self.save, self.retries, self.run_dir = save, retries, run_dir
        self.attempts = dict.fromkeys(self.by_key, 0)
        self.failure: CellFailure | None = None
        self.lost: list[Cell] = []

    def finished(self, result: CellDone | CellFailure) -> None:
        if isinstance(result, CellFailure):
            if self.failure is None:
                self.failure = result
            log.debug("traceback of the failed cell:\n%s", result.traceback)
        else:
            self.save(self.by_key[result.key], result)

    def died(self, key: tuple[int, int, str]) -> bool:
        """Count a death of ``key``'s worker; whether the cell may be started again."""
        self.attempts[key] += 1
        if self.attempts[key] > self.retries:
            self.lost.append(self.by_key[key])
            return False
        return True

    def lose(self, cell: Cell) -> None:
        """``cell``'s worker died as often as retries allow (Ray retried it itself): leave it for ``--resume``."""
        self.lost.append(cell)

    def raise_if_failed(self) -> None:
        """After the cells in flight came back: the first failure as the sequential run raises it, or the lost cells."""
        if self.failure is not None:
            if self.failure.input_error:
                raise InputError(self.failure.message)
            raise CellFailed(self.failure.message, self.run_dir)
        if self.lost:
            names = ", ".join(describe_cell(c) for c in self.lost[:3])
            times = "once" if self.retries == 0 else f"{self.retries + 1} times"
            raise CellFailed(
                f"{names}: the worker process died {times} (killed, or out of memory? from a Python "
                f"script, workers need its `if __name__ == '__main__':` guard)",
                self.run_dir,
            )


class LocalPoolExecutor:
    """Cells in ``workers`` local processes; at most one cell per worker is handed out at a time."""

    def __init__(self, execution: ExecutionSpec, registry: Registry, run_dir: Path):
        self.execution, self.registry, self.run_dir = execution, registry, run_dir

    def run(self, cells: list[Cell], save: Save) -> None:
        context = _start_method()
        records = context.Queue()
        listener = logging.handlers.QueueListener(records, _Redispatch())
        listener.start()
        outcomes = _Outcomes(cells, save, self.execution.retries, self.run_dir)
        pending = list(cells)
        pool = None
        try:
            while pending and outcomes.failure is None:
                pool = self._pool(context, records)
                broken = self._drain(pool, pending, outcomes)
                pool.shutdown(wait=True)
                pool = None
                if broken and pending and outcomes.failure is None:
                    log.warning(
                        "a worker process died (killed, or out of memory?); its cells start again (each at most %d times)",
                        self.execution.retries,
                    )
        finally:
            if pool is not None:
                _terminate(pool)
            listener.stop()
        outcomes.raise_if_failed()

    def _drain(self, pool: ProcessPoolExecutor, pending: list[Cell], outcomes: _Outcomes) -> bool:
        """Hand ``pending`` cells to ``pool`` and collect them until none is left in flight; whether the pool broke
        (a worker died: its cells in flight go back to ``pending`` while they have retries left)."""
        in_flight: dict[Future, Cell] = {}
        broken = False
        while True:
            while pending and not broken and outcomes.failure is None and len(in_flight) < self.execution.workers:
                try:
                    future = pool.submit(compute_job, make_job(pending[0], self.execution, self.registry))
                except BrokenProcessPool:  # a worker died since the last wait; its cell shows it below
                    broken = True
                    break
                in_flight[future] = pending.pop(0)
            if not in_flight:
                return broken
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                cell = in_flight.pop(future)
                try:
                    outcomes.finished(future.result())
                except BrokenProcessPool:
                    broken = True
                    if outcomes.died(cell.key):
                        pending.insert(0, cell)

    def _pool(self, context: Any, records: Any) -> ProcessPoolExecutor:
        level = logging.getLogger("harmonia").getEffectiveLevel()
        return ProcessPoolExecutor(
            self.execution.workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), records, level, harmonia_environment()),
        )


def _start_method() -> Any:
    """*forkserver* where the platform has it: a clean server process imports harmonia and its plugins once and forks
    each worker from it, so a worker starts in a fraction of a second; else *spawn*. Never plain *fork*: forking
    the driver, whose torch may have started threads, can deadlock the child."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *FIRST_PARTY_MODULES])
    return context


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool at once (Ctrl-C or an error in the driver): its cells in flight are dropped, never saved."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Cells as Ray tasks, each with its CPU and GPU request, on a local Ray or a running cluster; Ray starts a cell
    again when its worker dies (``execution.retries`` times)."""

    def __init__(self, execution: ExecutionSpec, registry: Registry, run_dir: Path):
        self.execution, self.registry, self.run_dir = execution, registry, run_dir

    def run(self, cells: list[Cell], save: Save) -> None:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            self._init(ray)
        outcomes = _Outcomes(cells, save, self.execution.retries, self.run_dir)
        task = ray.remote(compute_job).options(
            num_cpus=self.execution.cpus_per_cell,
            num_gpus=self.execution.gpus_per_cell,
            max_retries=self.execution.retries,
        )
        refs = {task.remote(make_job(c, self.execution, self.registry)): c for c in cells}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                cell = refs.pop(ready[0])
                try:
                    outcomes.finished(ray.get(ready[0]))
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
                    outcomes.lose(cell)
                except ray.exceptions.TaskCancelledError:
                    continue
                if outcomes.failure is not None:
                    for ref in refs:
                        ray.cancel(ref)
        finally:
            if started_here:
                ray.shutdown()
        outcomes.raise_if_failed()

    def _init(self, ray: Any) -> None:
        address = self.execution.ray_address
        # a local Ray's workers import from the driver's path, as local worker processes do; a cluster's nodes
        # need harmonia and the plugins installed
        local = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}}
        try:
            ray.init(
                address=address,
                num_cpus=None if address else self.execution.workers,
                runtime_env=None if address else local,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except (ConnectionError, RuntimeError) as exc:
            raise InputError(f"execution.ray_address: cannot connect to Ray at {address!r} ({one_line(exc)})") from None


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise InputError("execution.executor: ray is not installed; pip install 'harmonia[ray]'") from None


def write_twins_side_by_side(specs: list[CohortSpec], registry: Registry, execution: ExecutionSpec) -> None:
    """Write the synthetic twins a run with local workers needs and the cache lacks, ``execution.workers`` at a time.

    The twins are those the driver would write one by one (same settings, same code, same files); the driver then
    finds them in the cache. A twin that fails here is left to the driver, which writes it again and reports the
    error as a sequential run does.
    """
    if execution.executor != "local" or execution.workers < 2 or data_home() is not None:
        return
    missing: dict[Path, tuple[type[Cohort], TwinSettings]] = {}
    for spec in specs:
        cls = registry.get("cohort", spec.plugin).cls
        folder = datasource.twin_folder(cls, spec.synthetic)
        if spec.root is None and not datasource.is_intact(folder):
            missing[folder] = (cls, spec.synthetic)
    if len(missing) < 2:
        return
    names = ", ".join(cls.name for cls, _ in missing.values())
    log.info("writing %d SYNTHETIC twins, %d at a time: %s", len(missing), execution.workers, names)
    with ProcessPoolExecutor(
        min(execution.workers, len(missing)),
        mp_context=_start_method(),
        initializer=adopt_environment,
        initargs=(harmonia_environment(),),
    ) as pool:
        futures = [pool.submit(datasource.ensure_twin, cls, twin) for cls, twin in missing.values()]
        for future in futures:
            if future.exception() is not None:
                log.debug("a twin written side by side failed; the driver writes it: %s", one_line(future.exception()))


def make_executor(
    execution: ExecutionSpec,
    registry: Registry,
    run_dir: Path,
    data_of: Callable[[SweepPoint], CohortData],
    on_start: Callable[[Cell], Callable[[Any], None] | None],
) -> InProcessExecutor | LocalPoolExecutor | RayExecutor:
    """The executor the run's ``execution:`` settings ask for."""
    if execution.executor == "ray":
        return RayExecutor(execution, registry, run_dir)
    if execution.workers > 1:
        return LocalPoolExecutor(execution, registry, run_dir)
    return InProcessExecutor(registry, data_of, run_dir, on_start)
