"""vendor_probe: how well a small classifier names the scanner domain of a cell's images (seed 002, "Name that
manufacturer"): the vendor information left in what a model sees, which a harmoniser should take to chance.

The probe is trained on every domain's train split with the domain as its label, its epoch is selected on
every domain's validation split, and it is scored on every domain's test split. The protocol splits each
domain's patients into train, validation and test (a paired cohort's patients once for all domains), so the
three sets share no patient and selection never sees a test item. The network, its inputs, its training and
its metrics are :mod:`harmonia.probe`'s.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field

from harmonia import hookimpl
from harmonia.api import ALL_DOMAINS, CellView, Evaluator, Metric, Params
from harmonia.intensity import BROAD_CT_WINDOW
from harmonia.probe import (
    DomainScores,
    LinearProbe,
    ProbeNet,
    ProbeScore,
    ProbeSet,
    ProbeTraining,
    domain_probabilities,
    domain_scores,
    fit_probe,
    probe_inputs,
    seeded,
    subsample,
)
from harmonia.seeding import derive_seed

ProbeInput = Literal["raw", "transformed", "features"]
#: what each input mode probes, for the metrics' notes
PROBED: dict[str, str] = {
    "raw": "a shallow CNN on the raw images",
    "transformed": "a shallow CNN on the images after the cell's mitigations' transforms",
    "features": "a linear probe on the trained model's features",
}


def _rising(window: tuple[float, float] | str | None) -> tuple[float, float] | str | None:
    if isinstance(window, tuple) and not window[0] < window[1]:
        raise ValueError(f"the window's low end must be below its high end, got {list(window)}")
    return window


class VendorProbeParams(Params):
    input: ProbeInput = Field(
        "raw",
        description="what the probe reads: raw (each split's images, untransformed), transformed (the images the "
        "model sees after the cell's mitigations' transforms) or features (the trained model's features, through a "
        "linear probe)",
    )
    epochs: int = Field(10, ge=1, le=1000, description="probe training epochs (the best on validation AUROC is kept)")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate (seed 002: 5e-3)")
    batch_size: int = Field(32, ge=1, description="probe batch size (seed 002: 32)")
    window: Annotated[tuple[float, float] | Literal["auto"] | None, AfterValidator(_rising)] = Field(
        None,
        description="[low, high] in native units, clipped and scaled to [0, 1] (inputs raw and transformed): CT "
        "recipes should set one, e.g. [-160, 240] HU, seed 002's level 40 / width 400; auto: the broad CT window "
        f"{list(BROAD_CT_WINDOW)} HU on CT cohorts and each image's min-max on the others (for recipes whose "
        "cohorts share one evaluator list); none: each image's own min-max, which hides any per-image affine "
        "intensity change, as the engine's per-image z-score hides it from the task model",
    )
    bootstrap: int = Field(
        200,
        ge=0,
        le=10_000,
        description="patient bootstrap resamples for the 95% intervals (*_ci_low, *_ci_high); 0: no intervals",
    )
    max_items_per_domain: int | None = Field(
        200,
        ge=1,
        description="at most this many items of each domain in each of train, validation and test, drawn at "
        "random from the cell's seed (none: all), to bound the probe's cost",
    )


class VendorProbe(Evaluator):
    """Domain AUROC, balanced accuracy and per-domain recall of a probe naming each test item's scanner domain.

    Metrics, in order, each followed by its 95% interval (``_ci_low``, ``_ci_high``) when ``bootstrap`` > 0 (test
    patients resampled within their domains, see :func:`harmonia.probe.domain_scores`):
    ``probe_auroc`` (two domains: of the second domain's probability; more: one-vs-rest macro mean) and
    ``probe_balanced_accuracy`` (mean recall over domains), both with test_domain ``all``; then for each domain
    ``probe_recall`` (the fraction of its test items the probe names correctly) with that domain as test_domain,
    each test patient's own recall kept in ``patients.csv``. ``n`` is the number of test items scored.
    Chance is 0.5 for AUROC and 1/K for balanced accuracy and recall (K domains), and chance is what a
    harmoniser aims for: lower is better here (``higher_is_better`` only orients comparisons in reports).

    With ``input: raw`` the probe does not depend on the cell's model, but each cell draws its own items,
    slices, initial weights and bootstrap from its seed. Cost: the CNN trains on up to ``max_items_per_domain`` items
    of each domain for ``epochs`` epochs: seconds on a GPU, minutes per cell for 128² slices on two CPU cores.
    """

    name = "vendor_probe"
    Params = VendorProbeParams
    scope = "cell"
    #: less vendor information is what a harmoniser aims for; this only orients comparisons in reports (a
    #: cell-scope evaluator never selects epochs)
    higher_is_better = False

    def evaluate_cell(self, view: CellView) -> list[Metric]:
        p = self.params
        train, val, test = (self.probe_set(view, part) for part in ("train", "val", "test"))
        model = seeded(lambda: self.make_probe(train, len(view.domains)), derive_seed(view.seed, self.name, "init"))
        settings = ProbeTraining(
            p.epochs, derive_seed(view.seed, self.name, "batches"), p.lr, p.batch_size, view.device
        )
        fit_probe(model, train, val, settings)
        probabilities = domain_probabilities(model, test.inputs, p.batch_size, view.device)
        rng = np.random.default_rng(derive_seed(view.seed, self.name, "bootstrap"))
        return self.named(domain_scores(test, probabilities, p.bootstrap, rng))

    def probe_set(self, view: CellView, part: Literal["train", "val", "test"]) -> ProbeSet:
        """Every domain's items of split ``part`` (at most ``max_items_per_domain`` each) as the probe reads them."""
        inputs, labels, patients = [], [], []
        for label, domain in enumerate(view.domains):
            rng = np.random.default_rng(derive_seed(view.seed, self.name, domain, part))
            items = view.split(domain, part)
            items = items.take(subsample(len(items), self.params.max_items_per_domain, rng))
            inputs.append(self.read(view, items.images, rng))
            labels.append(torch.full((len(items),), label, dtype=torch.long))
            patients.append(items.patients)
        return ProbeSet(torch.cat(inputs), torch.cat(labels), np.concatenate(patients), tuple(view.domains))

    def read(self, view: CellView, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """What the probe reads of native-unit ``images`` in the ``input`` mode."""
        if self.params.input == "features":
            return view.features(images)
        if self.params.input == "transformed":
            images = view.transform(images)
        return probe_inputs(images, self.window_for(view.modality), rng)

    def window_for(self, modality: str | None) -> tuple[float, float] | None:
        """The window the probe clips to on a cohort of ``modality`` (``auto`` resolved; see the parameter)."""
        if self.params.window != "auto":
            return self.params.window
        return BROAD_CT_WINDOW if modality == "CT" else None

    def make_probe(self, train: ProbeSet, domains: int) -> torch.nn.Module:
        if self.params.input == "features":
            return LinearProbe(train.inputs, domains)
        return ProbeNet(train.inputs.shape[1], domains)

    def named(self, scores: DomainScores) -> list[Metric]:
        """The metrics in their order: AUROC and balanced accuracy over all domains, then each domain's recall."""
        chance = 1 / len(scores.recall)
        metrics = self.metrics("probe_auroc", scores.auroc, ALL_DOMAINS, 0.5)
        metrics += self.metrics("probe_balanced_accuracy", scores.balanced_accuracy, ALL_DOMAINS, chance)
        for domain, score in scores.recall.items():
            metrics += self.metrics("probe_recall", score, domain, chance)
        return metrics

    def metrics(self, name: str, score: ProbeScore, test_domain: str, chance: float) -> list[Metric]:
        """``name`` and, with a bootstrap, its interval, with a note naming the input mode and chance."""
        note = f"vendor probe, input {self.params.input}: {PROBED[self.params.input]}; chance {chance:.3g}"
        metrics = [Metric(name, score.value, score.n, note, score.per_patient, test_domain)]
        if self.params.bootstrap:
            metrics += [
                Metric(f"{name}_ci_low", score.low, score.n, note, test_domain=test_domain),
                Metric(f"{name}_ci_high", score.high, score.n, note, test_domain=test_domain),
            ]
        return metrics


@hookimpl
def harmonia_evaluators():
    return [VendorProbe]
