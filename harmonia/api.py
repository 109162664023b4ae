"""The four plugin interfaces (cohort, model, mitigation, evaluator) and the typed objects they exchange.

This module is the ground floor of harmonia: it imports nothing else from the package but
``errors``, ``privacy`` and ``strict``, and every other module (and every plugin) may import it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar, get_args

import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, ConfigDict, Field
from torch import nn

from harmonia.errors import UnreadableFile
from harmonia.privacy import pseudonymize
from harmonia.strict import StrictModel

T = TypeVar("T")
TaskKind = Literal["segmentation", "classification"]
PluginKind = Literal["cohort", "model", "mitigation", "evaluator"]
PLUGIN_KINDS: tuple[PluginKind, ...] = ("cohort", "model", "mitigation", "evaluator")
#: the ``test_domain`` of a metric about every domain at once (a vendor probe's domain AUROC)
ALL_DOMAINS = "all"


class Params(StrictModel):
    """Base for a plugin's parameter model: strict (see :class:`StrictModel`), validated on assignment."""

    model_config = ConfigDict(validate_assignment=True)


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from exc
    return value


#: a parameter holding a regular expression, checked to compile when the recipe is validated
RegexPattern = Annotated[str, AfterValidator(_compiles)]


class NoParams(Params):
    """Parameter model of a plugin that takes no parameters."""


class Plugin:
    """What every plugin class declares: its name, its kind and its typed parameters.

    The first line of the class docstring is the one-line description ``harmonia list`` shows.
    """

    kind: ClassVar[PluginKind]
    name: ClassVar[str]
    Params: ClassVar[type[Params]] = NoParams

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# --------------------------------------------------------------------------------------------
# Data exchanged between cohorts, the protocol, the engine and evaluators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What a cohort asks of a model: the kind of prediction, the classes and the image geometry.

    ``item_shape`` is the spatial shape of one item (no channel axis) where known: the protocol fills it
    from the cohort before making the model, so a model can size its input layer (NoduleX takes a crop's
    slices as channels); empty when not known.
    """

    kind: TaskKind
    class_names: tuple[str, ...]
    spatial_dims: int = 2
    in_channels: int = 1
    item_shape: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class ImageSet:
    """Images of one or more patients held in memory, one row per training item.

    ``images`` are float32 ``[N, C, *spatial]`` in the modality's native units (z-scoring is the
    engine's job, so that a mitigation can act in native units, e.g. noise in HU).
    ``targets`` are int64: ``[N, *spatial]`` label maps for segmentation, ``[N]`` for classification;
    None for an *unlabelled* set, which is how a mitigation without ``uses_target_labels`` receives
    the target-domain images (None rather than a placeholder, so that any use of the labels fails at once).
    ``patients`` and ``domains`` give each item's pseudonymous patient and its scanner domain.
    """

    images: torch.Tensor
    targets: torch.Tensor | None
    patients: np.ndarray
    domains: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        n_targets = n if self.targets is None else len(self.targets)
        if not (n_targets == len(self.patients) == len(self.domains) == n):
            raise ValueError(
                f"ImageSet fields differ in length: images {n}, targets {n_targets}, "
                f"patients {len(self.patients)}, domains {len(self.domains)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        """Whether the set carries its labels (``targets`` is not None)."""
        return self.targets is not None

    def without_targets(self) -> ImageSet:
        """The same items with no labels (``targets`` None); the tensors are shared, not copied."""
        return ImageSet(self.images, None, self.patients, self.domains)

    def take(self, index: np.ndarray | Sequence[int] | torch.Tensor) -> ImageSet:
        """The items at ``index`` (integer positions or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        t = torch.as_tensor(index, dtype=torch.long)
        targets = None if self.targets is None else self.targets[t]
        return ImageSet(self.images[t], targets, self.patients[index], self.domains[index])

    def of_patients(self, patients: Sequence[str], domain: str | None = None) -> ImageSet:
        """The items that belong to ``patients`` (only those of ``domain`` when given: paired cohorts
        hold the same patient in several domains)."""
        keep = np.isin(self.patients, np.asarray(list(patients), dtype=object))
        if domain is not None:
            keep &= self.domains == domain
        return self.take(keep)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        """The items of ``sets`` in order; labelled and unlabelled sets do not mix (a ValueError saying why)."""
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ValueError("cannot concatenate an empty list of image sets")
        labelled = {s.labelled for s in sets}
        if len(labelled) > 1:
            raise ValueError(
                "cannot join labelled and unlabelled image sets: target-domain images reach a mitigation "
                "without labels unless it sets uses_target_labels = True"
            )
        return ImageSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.targets for s in sets]) if labelled == {True} else None,
            np.concatenate([s.patients for s in sets]),
            np.concatenate([s.domains for s in sets]),
        )


class ItemsBuilder:
    """Single-channel items gathered patient by patient and joined into one :class:`ImageSet` (a loader's tail)."""

    def __init__(self, item_shape: Sequence[int], target_shape: Sequence[int] = ()):
        self.item_shape, self.target_shape = tuple(item_shape), tuple(target_shape)
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.patients: list[str] = []
        self.domains: list[str] = []

    def add(
        self, images: np.ndarray | Sequence[np.ndarray], targets: Sequence | np.ndarray, patient: str, domain: str
    ) -> None:
        """Add one patient's ``n`` images (``[n, *item_shape]``) of ``domain`` and their ``n`` targets."""
        images = np.asarray(images, dtype=np.float32).reshape(-1, *self.item_shape)
        targets = np.asarray(targets, dtype=np.int64).reshape(-1, *self.target_shape)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images.append(images)
        self.targets.append(targets)
        self.patients += [patient] * len(images)
        self.domains += [domain] * len(images)

    def image_set(self) -> ImageSet:
        """Everything added, in order, with a channel axis: ``[N, 1, *item_shape]`` (empty when nothing was)."""
        images = np.concatenate([np.zeros((0, *self.item_shape), np.float32), *self.images])
        targets = np.concatenate([np.zeros((0, *self.target_shape), np.int64), *self.targets])
        return ImageSet(
            images=torch.from_numpy(images)[:, None],
            targets=torch.from_numpy(targets),
            patients=np.array(self.patients, dtype=object),
            domains=np.array(self.domains, dtype=object),
        )


def require_known(patients: Sequence[str], known: Mapping[str, object]) -> None:
    """KeyError naming (up to three of) the ``patients`` a cohort's index does not hold."""
    unknown = [p for p in patients if p not in known]
    if unknown:
        raise KeyError(f"patients not in this cohort's index: {unknown[:3]}")


#: a scanner-signature component of the acquisition simulator (:mod:`harmonia.synth`) that may differ between vendors
ComponentName = Literal["contrast", "psf", "bias", "transfer", "noise"]
#: the components, in the order the simulator applies them
COMPONENTS: tuple[str, ...] = get_args(ComponentName)


def _in_component_order(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` without repeats, in the order the simulator applies them, so equal sets give one twin cache key."""
    return tuple(name for name in COMPONENTS if name in names)


class TwinSettings(StrictModel):
    """How large and how hard a cohort's synthetic twin is; part of the recipe's ``cohort.synthetic``."""

    patients: int = Field(12, ge=2, description="patients per scanner domain")
    seed: int = Field(0, ge=0, description="seed of the phantoms and the scanner signatures")
    strength: float = Field(1.0, ge=0.0, description="scanner-signature strength (0 = no vendor effect)")
    difficulty: float = Field(0.5, ge=0.0, le=1.0, description="task difficulty (0 easy, 1 hard)")
    components: Annotated[tuple[ComponentName, ...], AfterValidator(_in_component_order)] = Field(
        COMPONENTS,
        description="signature components that differ between vendors (the rest stay at the modality's neutral "
        f"acquisition): any of {', '.join(COMPONENTS)}",
    )


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


class CohortParams(Params):
    """Parameters every cohort takes; a cohort's own parameter model extends this one."""

    on_unreadable: Literal["stop", "skip"] = Field(
        "stop",
        description="a file that cannot be read stops the run (stop) or is skipped and listed in the run's "
        "unreadable.csv (skip)",
    )


@dataclass(frozen=True)
class UnreadableRecord:
    """A file a cohort skipped: the patient's pseudonym, a reference to the file that names no part of it, and why."""

    patient: str
    file: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PatientRecord:
    """One readable unit of a patient (a case, a study, an image) in one scanner domain, as a loader finds it.

    ``raw_id`` is the dataset's own patient identifier: :class:`Cohort` turns it into the pseudonym,
    and it never leaves the cohort. A patient may have several records (several images, or one per
    domain where the domains share patients); the first record of a patient in a domain gives its
    ``stratum``. A cohort subclasses this with what it needs to read the record (paths, series).
    """

    raw_id: str
    domain: str
    stratum: str | None = None


#: one record's items: float images ``[n, *item_shape]`` in native units and int targets ``[n, *target_shape]``
Items = tuple[np.ndarray, np.ndarray]


class Cohort(Plugin, ABC):
    """A dataset split into scanner domains: indexes patients and loads their images.

    A cohort is constructed on a data folder that is either the real dataset as distributed or
    its synthetic twin written by :meth:`write_twin` in the same layout; the loader does not know
    which. Patient identifiers leave the cohort only as pseudonyms.

    The class is a template: a cohort lists its :meth:`records` and reads one record's items
    (:meth:`read_items`); the base class pseudonymises, indexes, loads, applies ``on_unreadable``
    and assembles the :class:`ImageSet`. A cohort that needs full control overrides
    :meth:`index` and :meth:`load` instead.
    """

    kind: ClassVar[PluginKind] = "cohort"
    modality: ClassVar[str]
    #: whether every patient is imaged in every domain (a reconstruction study), so that a patient's images pair
    #: across domains; cross-vendor cohorts are not paired
    paired: ClassVar[bool] = False
    #: one line on how to obtain the real dataset, shown when it is configured but missing
    obtain: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = CohortParams

    def __init__(self, params: Params, root: Path):
        self.params = params
        self.root = Path(root)
        #: files skipped under ``on_unreadable: skip``, in the order they were met
        self.unreadable: list[UnreadableRecord] = []
        #: patients left out for a reason that is no fault of the copy (no contours, no label): pseudonym -> reason
        self.excluded: dict[str, str] = {}

    #: the prediction task; a class attribute where fixed (recipes are then checked against it
    #: before anything runs), or a property where it depends on the parameters
    task: Task

    # -- what a cohort supplies ------------------------------------------------------------------

    @abstractmethod
    def domains(self) -> list[str]:
        """The scanner domains in the order the study uses them (e.g. ``["Siemens", "Philips"]``)."""

    def records(self) -> Iterable[PatientRecord]:
        """Every usable record, in study order (called once); patients left out go through :meth:`exclude`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither records() nor index() and load()")

    def read_items(self, record: PatientRecord) -> Items:
        """The items of one record; raises :class:`~harmonia.errors.UnreadableFile` for a file it cannot read."""
        raise NotImplementedError(f"{type(self).__name__} implements neither read_items() nor load()")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The spatial shape of every item (no channel axis)."""
        raise NotImplementedError(f"{type(self).__name__} does not give its item_shape")

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one target: the item's (a label map) for segmentation, a class index for classification."""
        return self.item_shape if self.task.kind == "segmentation" else ()

    @classmethod
    @abstractmethod
    def check_root(cls, root: Path) -> None:
        """Raise :class:`~harmonia.errors.DataError` saying what was expected where if ``root`` is not a usable copy."""

    @classmethod
    @abstractmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        """Write the synthetic twin into ``out`` in the real dataset's on-disk layout."""

    # -- what the template does with it ----------------------------------------------------------

    @cached_property
    def _records(self) -> dict[str, list[PatientRecord]]:
        """Pseudonym -> the patient's records, in the order :meth:`records` gave them."""
        by_patient: dict[str, list[PatientRecord]] = {}
        for record in self.records():
            by_patient.setdefault(pseudonymize(record.raw_id, self.name), []).append(record)
        return by_patient

    def index(self) -> pd.DataFrame:
        """One row per patient and domain: ``patient`` (pseudonym), ``domain``, ``stratum`` (a label to stratify
        on, or None)."""
        rows: dict[tuple[str, str], dict[str, str | None]] = {}
        for pseudonym, records in self._records.items():
            for record in records:
                row = {"patient": pseudonym, "domain": record.domain, "stratum": record.stratum}
                rows.setdefault((pseudonym, record.domain), row)
        return pd.DataFrame(list(rows.values()), columns=["patient", "domain", "stratum"])

    def load(self, patients: Sequence[str]) -> ImageSet:
        """The items of ``patients`` (pseudonyms of :meth:`index`) in every domain they have, in native units.

        A record with an unreadable file stops the load (``on_unreadable: stop``) or gives no items
        and is listed in :attr:`unreadable` (``skip``).
        """
        require_known(patients, self._records)
        items = ItemsBuilder(self.item_shape, self.target_shape)
        for pseudonym in dict.fromkeys(patients):
            for record in self._records[pseudonym]:
                try:
                    images, targets = self.read_items(record)
                except UnreadableFile as error:
                    self.unreadable_file(error, record.raw_id)
                    continue
                items.add(images, targets, pseudonym, record.domain)
        return items.image_set()

    def exclude(self, patient: str, reason: str) -> None:
        """Leave out the patient with raw identifier ``patient``, recording why under its pseudonym."""
        self.excluded[pseudonymize(patient, self.name)] = reason

    def exclusion_counts(self) -> dict[str, int]:
        """How many patients were left out, per reason (what a run's manifest records)."""
        return dict(Counter(self.excluded.values()))

    def unreadable_file(self, error: UnreadableFile, patient: str) -> None:
        """Stop on ``error`` (``on_unreadable: stop``), or record it once and return so the caller skips the file.

        ``patient`` is the raw identifier the file belongs to. The record holds its pseudonym and
        :meth:`file_reference` of the file, never the file's path or name, which may name the patient.
        """
        if getattr(self.params, "on_unreadable", "stop") == "stop":
            raise error
        pseudonym = pseudonymize(patient, self.name)
        # a reader's own message (nibabel's, say) may quote the file; the record keeps neither it nor the patient
        reason = error.reason.replace(error.path, "<file>").replace(Path(error.path).name, "<file>")
        reason = reason.replace(str(patient), pseudonym)
        record = UnreadableRecord(pseudonym, self.file_reference(error.path, pseudonym), reason)
        if record not in self.unreadable:
            self.unreadable.append(record)

    def skip_unreadable(self, patient: str, read: Callable[[], T]) -> T | None:
        """What ``read()`` returns, or None once the :class:`UnreadableFile` it raised is recorded (``skip``);
        for files a cohort reads while listing its records (a header's vendor, a reader's XML)."""
        try:
            return read()
        except UnreadableFile as error:
            self.unreadable_file(error, patient)
            return None

    def file_reference(self, path: Path | str, pseudonym: str) -> str:
        """``<pseudonym>/file-<12 hex>``: a stable, salted name of the file ``path`` that holds no part of the path."""
        path = Path(path)
        relative = path.relative_to(self.root) if path.is_relative_to(self.root) else path
        return f"{pseudonym}/file-{pseudonymize(relative.as_posix(), f'{self.name}/file')[1:13]}"


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


#: a training loss: ``loss(logits, targets)`` -> a scalar tensor, with ``logits`` ``[N, classes, ...]`` and
#: ``targets`` int64 class indices ``[N, ...]`` (label maps for segmentation); usually an ``nn.Module``
TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ModelOutput:
    """A model's answer: ``logits`` ``[N, classes, ...]`` and the ``features`` DANN and probes attach to.

    ``levels`` are optional intermediate feature maps, shallowest first (a U-Net: each encoder level,
    the bottleneck last), one per entry of :attr:`Model.level_channels`; empty when the model exposes none.
    """

    logits: torch.Tensor
    features: torch.Tensor
    levels: tuple[torch.Tensor, ...] = ()

    def split(self, n: int) -> tuple[ModelOutput, ModelOutput]:
        """The output of the first ``n`` items and that of the rest (a joint forward pass, taken apart)."""
        first = ModelOutput(self.logits[:n], self.features[:n], tuple(level[:n] for level in self.levels))
        rest = ModelOutput(self.logits[n:], self.features[n:], tuple(level[n:] for level in self.levels))
        return first, rest


class Model(Plugin, nn.Module):
    """A task network. ``forward`` returns a :class:`ModelOutput`; ``feature_channels`` sizes heads on its features.

    A model may also expose intermediate feature maps as ``ModelOutput.levels``, with their channel
    counts in ``level_channels`` (DANN's ``features: multilevel`` reads them).
    """

    kind: ClassVar[PluginKind] = "model"
    #: task kinds this model can solve
    tasks: ClassVar[tuple[TaskKind, ...]] = ("segmentation", "classification")
    #: image dimensionalities it takes (``Task.spatial_dims``): 2-D images, 3-D volumes or crops
    image_dims: ClassVar[tuple[int, ...]] = (2, 3)
    #: channels of each entry of ``ModelOutput.levels``, shallowest first; empty: the model exposes no levels
    level_channels: tuple[int, ...] = ()

    def __init__(self, params: Params, task: Task):
        nn.Module.__init__(self)
        self.params = params
        self.task = task

    feature_channels: int

    def forward(self, x: torch.Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def task_loss(self) -> TaskLoss:
        """The loss this model trains with: the task kind's default (:func:`harmonia.losses.default_task_loss`).

        Override to train with another one; a mitigation may still replace it (:meth:`Mitigation.task_loss`).
        """
        from harmonia.losses import default_task_loss  # on use: MONAI is slow to import and plugins import this module

        return default_task_loss(self.task)


# --------------------------------------------------------------------------------------------
# Mitigation
# --------------------------------------------------------------------------------------------


@dataclass
class TrainStep:
    """Everything a mitigation's training-loss stage may use at one optimisation step.

    ``images`` / ``targets`` / ``output`` are the (augmented, z-scored) source batch and the model's
    answer on it. ``target_images`` / ``target_output`` are an unlabeled batch from the other
    domains' *train* splits, present only when a mitigation sets ``uses_target_images``; there are
    never target labels here. With a joint forward (``Mitigation.joint_forward``) both outputs are
    the two parts of one pass over the concatenated batch.
    ``progress`` runs from 0 at the first step to 1 at the last.
    """

    model: Model
    images: torch.Tensor
    targets: torch.Tensor
    output: ModelOutput
    progress: float
    epoch: int
    step: int
    target_images: torch.Tensor | None = None
    target_output: ModelOutput | None = None


class Mitigation(Plugin):
    """A method against scanner shift, acting at any of the stages below; each is optional.

    Stages, in the order the protocol calls them for one (seed, training domain) cell
    (:class:`harmonia.stages.MitigationStack` is the one place that calls them):

    1. :meth:`adjust_training_set` - change the training split (target mixing);
    2. :meth:`task_loss` - replace the model's training loss (asked once, before any training work);
    3. :meth:`fit` - learn something before training (a standardizer);
    4. :meth:`transform_images` - change every image the model sees: the training set once after
       ``fit`` (unless ``transforms_training_images`` is False), and validation and test images before prediction;
    5. :meth:`build` - make trainable modules trained alongside the model (DANN's classifier);
    6. :meth:`augment_batch` - change each training batch, in ``batch_space`` units;
    7. :meth:`extra_loss` - add a term to the training loss at each step.

    Besides the stages, :meth:`epoch_metrics` reports figures for ``history.csv`` at each epoch's end.

    Within a stage, mitigations act in the recipe's order. Target-domain data reaches a
    mitigation only from the other domains' train splits, and without its labels (``targets``
    None) unless the mitigation sets ``uses_target_labels``.
    A fresh instance is made for every cell, so state never leaks between cells.
    """

    kind: ClassVar[PluginKind] = "mitigation"
    #: when True the engine draws an unlabeled target-domain batch at every step (see TrainStep)
    uses_target_images: ClassVar[bool] = False
    #: when True ``target_train`` keeps its labels in adjust_training_set and fit (supervised target mixing);
    #: otherwise its ``targets`` are None
    uses_target_labels: ClassVar[bool] = False
    #: when True (on the class, or set on an instance from its parameters) and a target batch is drawn,
    #: the model runs once on source and target concatenated, so normalisation layers with batch
    #: statistics see both domains together; the task loss still sees only the source part
    joint_forward: bool = False
    #: units of the images :meth:`augment_batch` receives: native (e.g. HU) or z-scored (on the class, or set
    #: on an instance from its parameters)
    batch_space: Literal["native", "normalized"] = "normalized"
    #: whether :meth:`transform_images` also changes the training images (and target-domain training batches);
    #: False for a transform meant only for the images a trained model is tested on (a standardizer that maps
    #: other domains toward the training domain), set on an instance from its parameters
    transforms_training_images: bool = True

    def __init__(self, params: Params, task: Task):
        self.params = params
        self.task = task

    #: the cohort modalities ("CT", "MRI", "X-ray") the method is made for; None: any
    modalities: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def unsuited_to(cls, params: Params, cohort: type[Cohort]) -> str | None:
        """Why this mitigation with ``params`` cannot run on ``cohort`` (a plugin class), or None; checked when a
        recipe is validated, so that a CT-only method on MRI fails before any training. Override to add reasons."""
        modality = getattr(cohort, "modality", None)
        if cls.modalities and modality not in cls.modalities:
            return f"'{cls.name}' is made for {' or '.join(cls.modalities)}; cohort {cohort.name} is {modality}"
        return None

    @classmethod
    def is_inactive(cls, params: Params) -> bool:
        """Whether ``params`` make this mitigation change nothing (noise of sd 0, a mixing fraction of 0).

        Such a mitigation is left out of its sweep point, which is then the plain model (``mitigations``
        ``none``): the baseline that the other levels of a noise or mixing sweep are compared with.
        """
        return False

    def adjust_training_set(self, train: ImageSet, target_train: ImageSet | None, rng: np.random.Generator) -> ImageSet:
        return train

    def task_loss(self, default: TaskLoss) -> TaskLoss | None:
        """A loss to train with instead of ``default`` (the model's), or None to keep it.

        At most one mitigation of a cell may replace the loss; two are a configuration error.
        """
        return None

    def fit(self, train: ImageSet, target_train: ImageSet | None, device: torch.device) -> None:
        return None

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def build(self, model: Model) -> nn.Module | None:
        return None

    def augment_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch; randomness from torch's global RNG, which the engine seeds per cell."""
        return images, targets

    def extra_loss(self, step: TrainStep) -> torch.Tensor | None:
        return None

    def epoch_metrics(self) -> dict[str, float]:
        """Figures about the epoch just trained (e.g. a mean over its steps), called once at each epoch's end.

        Each key ``k`` becomes the ``history.csv`` column ``<name>.k``. Not a stage: it changes nothing.
        """
        return {}

    def cell_record(self) -> dict[str, int | float | str]:
        """Figures about what this mitigation did in the cell (e.g. how many target items it mixed in),
        asked once after training; the manifest keeps them with the cell as ``<name>.<key>``. Not a stage."""
        return {}

    def save_artifacts(self, directory: Path, stem: str) -> None:
        """Write what this mitigation learned in the cell (a trained standardizer) into ``directory``, file names
        starting with ``stem`` (which names the cell); called once after training. Not a stage; by default nothing."""
        return None

    @classmethod
    def stages(cls) -> list[str]:
        """Names of the stages this mitigation implements (those it overrides)."""
        return [s for s in STAGES if getattr(cls, s) is not getattr(Mitigation, s)]


STAGES = (
    "adjust_training_set",
    "task_loss",
    "fit",
    "transform_images",
    "build",
    "augment_batch",
    "extra_loss",
)


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """A model's predictions on one test set, on the CPU.

    ``predicted`` holds class indices (label maps for segmentation); ``probabilities`` holds the
    softmax output ``[N, classes, ...]`` where an evaluator needs scores (AUC).
    """

    task: Task
    targets: torch.Tensor
    predicted: torch.Tensor
    patients: np.ndarray
    probabilities: torch.Tensor | None = None

    def check_label_maps(self, who: str) -> None:
        """A ValueError naming ``who`` unless predicted and target label maps share one shape and every item (at
        least one) has its patient: what a per-patient segmentation metric relies on."""
        if self.predicted.shape != self.targets.shape:
            raise ValueError(
                f"{who}: predicted {tuple(self.predicted.shape)} and targets {tuple(self.targets.shape)} differ in shape"
            )
        if len(self.patients) != len(self.targets) or len(self.targets) == 0:
            raise ValueError(
                f"{who}: {len(self.targets)} items but {len(self.patients)} patient ids (need one per item, at least one)"
            )


@dataclass(frozen=True)
class Metric:
    """One named metric value over ``n`` units (patients or images, as the evaluator says).

    A value that is undefined on this test set (an AUC with one class present) is NaN, and ``note``
    says why; the run records the note in its manifest and the report counts such values.
    ``per_patient`` (pseudonym -> value) is kept in the run's ``patients.csv`` for paired analyses
    (a paired t-test, a Bland-Altman plot). ``test_domain`` is set only by a cell-scope evaluator
    (:attr:`Evaluator.scope`): the domain the value is about, or :data:`ALL_DOMAINS`. ``higher_is_better``
    overrides the evaluator's direction for this metric (a concordance among distances).
    """

    name: str
    value: float
    n: int
    note: str = ""
    per_patient: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    test_domain: str | None = None
    higher_is_better: bool | None = None


@dataclass
class CellView:
    """What a cell-scope evaluator sees of one trained cell: every domain's splits and the trained model.

    ``split(domain, part)`` gives the labelled items of a domain's ``train``, ``val`` or ``test`` split in
    native units, untransformed; ``transform`` applies the cell's mitigations' :meth:`Mitigation.transform_images`
    as the trained model sees its test images; ``features`` gives the trained model's ``features`` for native
    images (transformed and z-scored as for prediction), averaged over any spatial axes: ``[N, F]`` on the CPU.
    ``seed`` is for anything the evaluator draws at random; it is shared by every sweep point with the same cohort,
    model, seed index and training domain (common random numbers), so a mitigation's probe and its baseline's
    draw alike.
    """

    task: Task
    domains: tuple[str, ...]
    train_domain: str
    seed: int
    device: torch.device
    split: Callable[[str, Literal["train", "val", "test"]], ImageSet]
    transform: Callable[[torch.Tensor], torch.Tensor]
    features: Callable[[torch.Tensor], torch.Tensor]
    #: the cohort's modality ("CT", "MRI", "X-ray"), for choices that depend on it (a CT intensity window)
    modality: str | None = None


class Evaluator(Plugin):
    """Turns predictions on a test set into named metrics; the first one is the evaluator's primary metric.

    A ``scope = "cell"`` evaluator instead scores the trained cell as a whole, once, through
    :meth:`evaluate_cell` (a vendor probe trained on every domain's images); it cannot select epochs,
    so it is never a recipe's first evaluator.
    """

    kind: ClassVar[PluginKind] = "evaluator"
    tasks: ClassVar[tuple[TaskKind, ...]] = ("segmentation", "classification")
    #: ``test_set``: :meth:`evaluate` scores each test domain's predictions; ``cell``: :meth:`evaluate_cell`
    scope: ClassVar[Literal["test_set", "cell"]] = "test_set"
    #: whether a larger primary metric is better (used for epoch selection on validation)
    higher_is_better: ClassVar[bool] = True
    #: whether the evaluator needs ``Predictions.probabilities``
    needs_probabilities: ClassVar[bool] = False

    def __init__(self, params: Params, task: Task):
        self.params = params
        self.task = task

    def calibrate(self, validation: Predictions) -> None:
        """Learn what scoring needs from the training domain's validation split (a decision threshold), once per
        cell after training and before any test set; never sees a test split. By default nothing."""
        return None

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        """Metrics of ``predictions``; the first is the primary one (every test-set evaluator implements it)."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate test-set predictions")

    def evaluate_cell(self, view: CellView) -> list[Metric]:
        """Metrics of a whole trained cell, each naming its ``test_domain`` (a cell-scope evaluator implements it)."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate whole cells")


PLUGIN_BASES: dict[PluginKind, type[Plugin]] = {
    "cohort": Cohort,
    "model": Model,
    "mitigation": Mitigation,
    "evaluator": Evaluator,
}
