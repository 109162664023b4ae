"""target_mixing: labelled target-domain items added to the training set (Guo et al., Appendix A.1).

The paper's scanner-mixing experiment: with a fraction f of the training set taken from the
target domain, how much of the cross-scanner gap closes? The items come from the other domains'
*train* splits only (the protocol never hands a mitigation anything else), with their labels
(``uses_target_labels``), their own ``domains`` and their own ``patients``. Validation (epoch
selection) stays on the source domain's validation split; the test splits are untouched.

How many: with n source items, t = round(f·n / (1 − f)) target items are added, so that the
final set of n + t items is a fraction t / (n + t) ≈ f target-domain. The rounding is half up
(t = ⌊f·n / (1 − f) + ½⌋), so the fraction reached is within half an item of f·(n + t) —
``cell_record()['fraction_reached']`` gives it exactly. Where the cohort has several other domains,
their train splits are one pool; the draw does not balance the domains within it.

Which (``pick``):

- ``patient`` (default): the pool's patients in a random order, whole patients taken until t
  items are reached; the last patient's items are then trimmed (a random subset of them) to
  hit t exactly. Few patients, each complete, as a site adding a handful of scans would.
  In a paired cohort a patient counts once, with their items from every target domain;
- ``item``: t items drawn at random from the whole pool (the paper's "move images randomly").

When the pool holds fewer than t items, every item is taken once and then duplicated, cycling
through a fresh random order of the pool each round, until t is reached (as the paper
duplicated samples); each item is then used ⌊t / m⌋ or ⌈t / m⌉ times (m items in the pool).

All randomness comes from the ``rng`` the protocol passes (seeded per cell), so the same cell
mixes the same items. ``fraction: 0`` leaves the training set as it is. A fraction above 0 with
no target-domain training images (a one-domain cohort) is an :class:`~harmonia.errors.InputError`.

Per cell the manifest keeps ``target_mixing.<key>`` for the keys of :meth:`TargetMixing.cell_record`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import ImageSet, Mitigation, Params, Task
from harmonia.errors import InputError


class TargetMixingParams(Params):
    fraction: float = Field(
        ...,
        ge=0.0,
        lt=1.0,
        description="fraction f of the final training set that is target-domain (the paper's grid: 0.1 to 0.5); "
        "t = round(f·n/(1-f)) items are added to the n source items, rounding half up",
    )
    pick: Literal["patient", "item"] = Field(
        "patient",
        description="patient: whole target patients in random order, the last one trimmed to hit the count; "
        "item: single items at random from the pool",
    )


def target_count(source_items: int, fraction: float) -> int:
    """t = round(f·n / (1 − f)), half up: the target items that make ``fraction`` of ``source_items`` + t.

    A tolerance of 1e-9 absorbs floating-point error, so that an exact half (f = 0.2, n = 10: 2.5) rounds up.
    """
    if fraction <= 0.0:
        return 0
    return math.floor(fraction * source_items / (1.0 - fraction) + 0.5 + 1e-9)


def pick_by_patient(patients: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``count`` items (``count`` at most ``len(patients)``): whole patients in random order,
    the last one trimmed to a random subset of its items."""
    order = rng.permutation(np.array(sorted(set(patients)), dtype=object))
    chosen: list[np.ndarray] = []
    left = count
    for patient in order:
        if left == 0:
            break
        items = np.flatnonzero(patients == patient)
        if len(items) > left:
            items = np.sort(rng.choice(items, size=left, replace=False))
        chosen.append(items)
        left -= len(items)
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def with_duplicates(pool: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` positions in ``range(pool)`` (``count`` > ``pool``): every one once, in a random order, then
    again in a fresh random order each round, until ``count``."""
    rounds = [rng.permutation(pool) for _ in range(math.ceil(count / pool))]
    return np.concatenate(rounds)[:count]


class TargetMixing(Mitigation):
    """Target mixing: labelled items from the other domains' train splits make up a fraction f of the training set.

    Acts once per cell at the ``adjust_training_set`` stage; needs the target labels
    (``uses_target_labels``). The count, the rounding, how items are picked and when they are
    duplicated: see the module docstring. :meth:`cell_record` says what was mixed in.
    """

    name = "target_mixing"
    Params = TargetMixingParams
    uses_target_labels = True

    def __init__(self, params: TargetMixingParams, task: Task):
        super().__init__(params, task)
        self._record: dict[str, int | float | str] = {}

    @classmethod
    def is_inactive(cls, params: TargetMixingParams) -> bool:
        """Fraction 0 mixes nothing in: the sweep point is the plain model, a mixing sweep's baseline."""
        return params.fraction == 0.0

    def adjust_training_set(self, train: ImageSet, target_train: ImageSet | None, rng: np.random.Generator) -> ImageSet:
        """``train`` followed by t target items (see the module docstring); ``train`` itself when t is 0."""
        f, n = self.params.fraction, len(train)
        t = target_count(n, f)
        if f > 0.0 and (target_train is None or len(target_train) == 0):
            raise InputError(
                f"target_mixing: fraction {f:g} needs target-domain training images, but the cohort has no other "
                f"domain with training data; use a cohort with two or more domains, or fraction 0"
            )
        if t == 0:
            self._record = _figures(n, t, distinct=0, patients=0)
            return train
        if not target_train.labelled:
            raise RuntimeError("target_mixing: target_train came without labels; it needs uses_target_labels = True")
        m = len(target_train)
        if t > m:
            index = with_duplicates(m, t, rng)
        elif self.params.pick == "patient":
            index = pick_by_patient(target_train.patients, t, rng)
        else:
            index = np.sort(rng.choice(m, size=t, replace=False))
        mixed = target_train.take(index)
        self._record = _figures(n, t, distinct=len(np.unique(index)), patients=len(set(mixed.patients)))
        return ImageSet.concat([train, mixed])

    def cell_record(self) -> dict[str, int | float | str]:
        """``source_items`` n; ``target_items`` t added; ``distinct_target_items`` and ``duplicated_target_items``
        (t = distinct + duplicated); ``target_patients``, the distinct patients they come from; and
        ``fraction_reached`` = t / (n + t)."""
        return dict(self._record)


def _figures(n: int, t: int, distinct: int, patients: int) -> dict[str, int | float | str]:
    """What :meth:`TargetMixing.cell_record` reports for n source and t target items."""
    return {
        "source_items": n,
        "target_items": t,
        "distinct_target_items": distinct,
        "duplicated_target_items": t - distinct,
        "target_patients": patients,
        "fraction_reached": t / (n + t) if n + t else 0.0,
    }


@hookimpl
def harmonia_mitigations():
    return [TargetMixing]
