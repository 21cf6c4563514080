"""The evaluation engine: the one code path by which ``train.py`` (its periodic evaluation) and
``test.py`` score a network, so both give the same numbers for the same weights.

For each kind of data there is one evaluator, chosen once from the data-set table by
:func:`build_evaluator`:

- :class:`VolumeEvaluator` -- 3D volumes predicted slice by slice with the published protocol
  (``utils.inference.predict_volume``), scored per case and class with Dice and HD95
  (``utils.metrics``) in worker processes while the network predicts the next case;
- :class:`ImageEvaluator` -- 2D images, scored with the pixel metrics of ``utils.images`` on the
  confusion counts pooled over all images, and per image.

Each returns a typed result that logs itself, adds itself to TensorBoard and writes
``metrics.json`` / ``metrics.csv``. Inference is kept apart from the metrics (as MONAI's
``SliceInferer`` keeps it apart): a caller that wants each prediction -- test.py writing NIfTI
files and montages -- passes ``on_case``.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from datasets.catalog import IMAGES, DatasetInfo
from datasets.common import first_channel
from datasets.readers import ignore_stop_signals
from utils.errors import UserError
from utils.images import METRIC_NAMES, confusion, predict_image, scores
from utils.inference import predict_volume
from utils.metrics import CONVENTIONS, metrics_for_classes

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
SPACING_CHOICES = ("voxel", "file")
MAX_CLASSES = 256  # predictions and labels are uint8 (utils.inference.predict_volume, utils.images)
VOXEL, MM = "voxels", "mm"
# Workers only run numpy/scipy metric code, so fork is safe (no CUDA in the children) and skips
# re-importing torch in every worker.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"

OnCase = Callable[[dict, np.ndarray], None]
Spacing = str | tuple[float, float, float]
Progress = Callable[[Iterable, int], Iterable]


def _no_progress(items: Iterable, _total: int) -> Iterable:
    return items


@dataclass(frozen=True)
class EvalSettings:
    """How a network is run and scored; the same for train.py and test.py.

    Attributes:
        img_size: (h, w) network input size.
        batch_size: slices per forward pass (volumes).
        device: where the network runs.
        amp: "off", "bf16" or "fp16" autocast for inference.
        convention: empty-mask rule of the volume metrics (``utils.metrics.CONVENTIONS``).
        spacing: HD95 unit: "voxel" (published), "file" (each volume's stored spacing) or (z, y, x) mm.
        workers: processes computing metrics while the network predicts the next case (0: inline).
        rank, world_size: this process's share of a torchrun launch: it evaluates every
            ``world_size``-th case from ``rank`` on, and the processes gather the scores.
    """

    img_size: tuple[int, int]
    batch_size: int
    device: torch.device
    amp: str = "off"
    convention: str = "published"
    spacing: Spacing = "voxel"
    workers: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise UserError(
                f"the evaluation batch size must be at least 1 and the workers at least 0, "
                f"got {self.batch_size} and {self.workers}"
            )
        if self.convention not in CONVENTIONS:
            raise UserError(f"--metric_convention {self.convention!r}: choose one of {', '.join(CONVENTIONS)}")

    @property
    def unit(self) -> str:
        return VOXEL if self.spacing == "voxel" else MM


def parse_spacing(text: str) -> Spacing:
    """``--spacing``: "voxel", "file", or three positive mm values "z,y,x"."""
    if text in SPACING_CHOICES:
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise UserError(f"--spacing {text!r} must be 'voxel', 'file' or three positive mm values 'z,y,x', e.g. 2.5,0.8,0.8")
    return values  # type: ignore[return-value]


def _case_spacing(choice: str | tuple[float, float, float], case: dict) -> tuple[float, ...] | None:
    if choice == "voxel":
        return None
    if choice == "file":
        if case.get("spacing") is None:
            raise UserError(f"volume {case['case_name']} stores no spacing; use --spacing z,y,x (mm) or --spacing voxel")
        return tuple(case["spacing"])
    return tuple(choice)  # type: ignore[arg-type]


def _submit(executor: Executor | None, fn: Callable, *args: Any) -> Future:
    """Run ``fn`` in a worker process, or here and now when there are no workers."""
    if executor is not None:
        return executor.submit(fn, *args)
    future: Future = Future()
    future.set_result(fn(*args))
    return future


def prefetched(cases: Iterable[dict]) -> Iterator[dict]:
    """The items of ``cases``, each read in a background thread while the caller works on the
    previous one. The overlap is partial (the GIL is shared), but measured: predicting 4 phantom
    volumes of 512x512 (305 slices, 1.3 s of reading) took 3.62 s instead of 3.98 s (medians of 5,
    2 cores)."""
    iterator = iter(cases)
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(next, iterator, None)
        while True:
            case = pending.result()
            if case is None:
                return
            pending = reader.submit(next, iterator, None)
            yield case


def _write_metrics(folder: str | Path, content: dict, rows: list[list], source: dict | None) -> Path:
    """``metrics.json`` (full precision; ``source`` says what was scored) and ``metrics.csv`` in
    ``folder``, each written whole or not at all: both go to temporary files first, so a full
    disk leaves the previous pair as it was. Returns the JSON's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        content = {"source": source, **content}
    written = []
    try:
        for name, write in (
            (METRICS_JSON, lambda f: f.write(json.dumps(content, indent=2) + "\n")),
            (METRICS_CSV, lambda f: csv.writer(f).writerows(rows)),
        ):
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            written.append((tmp, folder / name))
            with open(tmp, "w", newline="") as stream:
                write(stream)
        for tmp, target in written:
            os.replace(tmp, target)
    except OSError as error:
        raise UserError(
            f"could not write {folder / METRICS_JSON} ({error.strerror or error}); free disk space and rerun"
        ) from None
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return folder / METRICS_JSON


class _EvalMode:
    """Put a network in eval mode for the evaluation and give it back in the mode it had."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *_: object) -> None:
        self.model.train(self.was_training)


def parse_class_list(text: str) -> list[int | str]:
    """``--report_classes``: comma-separated class names or ids, e.g. ``aorta,liver,3``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--report_classes {text!r} names no class; give names or ids, e.g. --report_classes aorta,liver")
    return [int(item) if item.isdigit() else item for item in items]


def class_positions(class_names: Sequence[str], class_ids: Sequence[int], classes: Sequence[int | str]) -> list[int]:
    """Positions in ``class_names`` (classes ``class_ids``) of ``classes``, given by name (any
    case) or id, in the order given.

    Raises:
        UserError: a class the result does not hold, or one named twice (one line, listing the
            classes there are).
    """
    by_name = {name.lower(): position for position, name in enumerate(class_names)}
    by_id = {class_id: position for position, class_id in enumerate(class_ids)}
    positions: list[int] = []
    for item in classes:
        position = by_id.get(item) if isinstance(item, int) else by_name.get(item.lower())
        if position is None:
            there = ", ".join(f"{class_id} {name}" for class_id, name in zip(class_ids, class_names))
            raise UserError(f"--report_classes: the network has no class {item!r}; its classes are {there}")
        if position in positions:
            raise UserError(f"--report_classes names class {class_names[position]!r} twice; give each class once")
        positions.append(position)
    return positions


class _ClassSubset:
    """What both results do with their classes: the network's ids of those they hold, the result
    over some of them (``select``), and what metrics.json says of them. ``BY_CLASS`` names the
    result's (cases, classes, ...) array, which ``select`` narrows to the chosen classes."""

    BY_CLASS: ClassVar[str]

    @property
    def ids(self) -> list[int]:
        return self.class_ids if self.class_ids is not None else list(range(1, len(self.class_names) + 1))

    def select(self, classes: Sequence[int | str]) -> Self:
        """The result over ``classes`` only (names or ids, in that order): the per-class scores
        are the same; the means are over these classes."""
        positions = class_positions(self.class_names, self.ids, classes)
        return replace(
            self,
            class_names=[self.class_names[p] for p in positions],
            class_ids=[self.ids[p] for p in positions],
            of_classes=self.of_classes or len(self.class_names),
            **{self.BY_CLASS: getattr(self, self.BY_CLASS)[:, positions]},
        )

    def _reported(self) -> dict:
        """What metrics.json says about the classes its means are over."""
        return {"ids": self.ids, "names": list(self.class_names), "of_classes": self.of_classes or len(self.class_names)}


# --------------------------------------------------------------------------------------------
# Volumes: Dice and HD95 per case and class


@dataclass
class VolumeResult(_ClassSubset):
    """Scores of a set of volumes.

    Attributes:
        class_names: names of classes 1..C-1.
        cases: case names, in evaluation order.
        scores: float64 (cases, C - 1, 2) -- Dice and HD95 of each case and class.
        convention: empty-mask rule (a "nan" convention averages with nanmean).
        unit: HD95 unit, "voxels" or "mm".
        example: one slice for a picture: ``{"image": (H, W) [0, 1], "prediction", "label"}``.
        class_ids: the network's ids of the classes held (None: all, 1..C-1); set by ``select``.
        of_classes: the network's foreground classes (None: those held).
    """

    class_names: list[str]
    cases: list[str]
    scores: np.ndarray
    convention: str
    unit: str
    example: dict = field(default_factory=dict, repr=False)
    class_ids: list[int] | None = None
    of_classes: int | None = None
    BY_CLASS: ClassVar[str] = "scores"

    def _mean(self, values: np.ndarray, axis: int) -> np.ndarray:
        return np.nanmean(values, axis=axis) if self.convention == "nan" else np.mean(values, axis=axis)

    @property
    def per_class(self) -> np.ndarray:
        """(C - 1, 2): mean Dice and HD95 of each class over the cases."""
        return self._mean(self.scores, axis=0)

    @property
    def mean_dice(self) -> float:
        return float(self._mean(self.per_class, axis=0)[0])

    @property
    def mean_hd95(self) -> float:
        return float(self._mean(self.per_class, axis=0)[1])

    @property
    def headline(self) -> float:
        """The figure that selects best.pth: mean Dice."""
        return self.mean_dice

    def log(self, title: str) -> None:
        """The per-case lines and the per-class table, in the published layout."""
        for name, case_scores in zip(self.cases, self.scores):
            logger.info("%s  mean Dice %.4f  mean HD95 %.2f", name, *self._mean(case_scores, axis=0))
        logger.info(
            "%s (%d case(s), convention %r): mean Dice %.4f, mean HD95 %.2f %s",
            title,
            len(self.cases),
            self.convention,
            self.mean_dice,
            self.mean_hd95,
            self.unit,
        )
        logger.info("%-14s %9s %12s", "class", "Dice (%)", f"HD95 ({self.unit})")
        for name, (dice, hd95) in zip(self.class_names, self.per_class):
            logger.info("%-14s %9.2f %12.2f", name, 100 * dice, hd95)
        logger.info("%-14s %9.2f %12.2f", "mean", 100 * self.mean_dice, self.mean_hd95)
        missed = self.never_predicted
        if missed:
            logger.warning(
                "never predicted in any case that holds it: %s -- under the published convention a missed "
                "organ scores Dice 0 and HD95 0, which lowers the mean Dice and also the mean HD95",
                ", ".join(missed),
            )

    @property
    def never_predicted(self) -> list[str]:
        """Classes the network predicted in no case that holds them, read from the scores alone:
        a missed class scores Dice 0 and HD95 0 under the published convention (an empty
        prediction of an absent class too; predicting an absent class scores 1), HD95 NaN under
        "nan"; a class predicted where it is present has an HD95 above 0 or a Dice above 0."""
        if not len(self.cases):
            return []
        dice, hd95 = self.scores[..., 0], self.scores[..., 1]
        if self.convention == "nan":
            missed = np.all(np.isnan(hd95) & ~(dice > 0), axis=0)
        else:
            missed = np.all((dice == 0) & (hd95 == 0), axis=0)
        return [name for name, flag in zip(self.class_names, missed) if flag]

    def add_to(self, writer: Any, tag: str, step: int) -> None:
        """TensorBoard scalars ``{tag}/mean_dice`` and ``{tag}/mean_hd95``."""
        writer.add_scalar(f"{tag}/mean_dice", self.mean_dice, step)
        writer.add_scalar(f"{tag}/mean_hd95", self.mean_hd95, step)

    def to_dict(self) -> dict:
        return {
            "convention": self.convention,
            "hd95_unit": self.unit,
            "classes": self._reported(),
            "mean_dice": self.mean_dice,
            "mean_hd95": self.mean_hd95,
            "per_class": [
                {"class": c, "name": name, "dice": float(d), "hd95": float(h)}
                for c, name, (d, h) in zip(self.ids, self.class_names, self.per_class)
            ],
            "cases": [
                {"case": case, "dice": s[:, 0].tolist(), "hd95": s[:, 1].tolist()} for case, s in zip(self.cases, self.scores)
            ],
        }

    @classmethod
    def merge(cls, parts: list[VolumeResult], order: list[str]) -> VolumeResult:
        """One result from the parts that several processes evaluated, cases in ``order``; the
        example is the first part's."""
        names = [name for part in parts for name in part.cases]
        rows = dict(zip(names, np.concatenate([part.scores for part in parts])))
        first, example = parts[0], next((part.example for part in parts if part.example), {})
        return cls(
            first.class_names,
            list(order),
            np.stack([rows[name] for name in order]),
            first.convention,
            first.unit,
            example,
            first.class_ids,
            first.of_classes,
        )

    def csv_rows(self) -> list[list]:
        rows: list[list] = [["case", "class", "name", "dice", "hd95"]]
        for case, case_scores in zip(self.cases, self.scores):
            rows += [
                [case, c, name, f"{dice:.6f}", f"{hd95:.6f}"]
                for c, name, (dice, hd95) in zip(self.ids, self.class_names, case_scores)
            ]
        rows += [
            ["mean", c, name, f"{dice:.6f}", f"{hd95:.6f}"]
            for c, name, (dice, hd95) in zip(self.ids, self.class_names, self.per_class)
        ]
        return [*rows, ["mean", "", "all", f"{self.mean_dice:.6f}", f"{self.mean_hd95:.6f}"]]

    def write(self, folder: str | Path, source: dict | None = None) -> Path:
        """Write ``metrics.json`` (full precision; ``source`` names what was scored) and
        ``metrics.csv`` into ``folder``."""
        return _write_metrics(folder, self.to_dict(), self.csv_rows(), source)


def _volume_example(case: dict, prediction: np.ndarray) -> dict:
    """The slice of ``case`` with the most labelled voxels, for a picture."""
    middle = int(np.argmax((case["label"] > 0).sum(axis=(1, 2))))
    return {"image": first_channel(case["image"])[middle], "prediction": prediction[middle], "label": case["label"][middle]}


def case_names(cases: Sequence) -> list[str]:
    """The names of evaluation cases: a reader's ``names``, or each item's ``case_name``."""
    return list(cases.names) if hasattr(cases, "names") else [case["case_name"] for case in cases]


class _Evaluator:
    """What every evaluator holds -- the classes and how the network runs -- and the one way a
    set of cases is evaluated, by one process or shared by the processes of a torchrun launch."""

    def __init__(self, num_classes: int, class_names: list[str], settings: EvalSettings) -> None:
        if num_classes > MAX_CLASSES:
            raise UserError(f"the evaluation stores class ids as bytes: at most {MAX_CLASSES} classes, got {num_classes}")
        self.num_classes = num_classes
        self.class_names = class_names
        self.settings = settings

    def evaluate(
        self, model: nn.Module, cases: Sequence, on_case: OnCase | None = None, progress: Progress = _no_progress
    ) -> EvalResult:
        """Predict and score every case of ``cases``.

        Args:
            model: the network (its train/eval mode is given back as it was).
            cases: a reader, or a list of case items (see the evaluators' ``_score``).
            on_case: called with each case this process predicts and its prediction (e.g. to save it).
            progress: wraps this process's iterator of cases, given its length (e.g. tqdm).

        Returns:
            The result over all cases, in the order of ``cases`` -- on every process of a
            torchrun launch, which each evaluated its share.
        """
        s = self.settings
        if s.world_size == 1:
            return self._score(model, progress(prefetched(cases), len(cases)), on_case)
        mine = range(s.rank, len(cases), s.world_size)
        part = self._score(model, progress(prefetched(cases[index] for index in mine), len(mine)), on_case)
        parts: list[Any] = [None] * s.world_size
        dist.all_gather_object(parts, part)
        return type(part).merge(parts, case_names(cases))


class VolumeEvaluator(_Evaluator):
    """Predict labelled volumes with the published protocol and score them (Dice, HD95)."""

    def predict(self, model: nn.Module, image: np.ndarray) -> np.ndarray:
        """(D, H, W) -- or (D, K, H, W) of K channels -- intensities in [0, 1] -> (D, H, W) uint8 labels."""
        s = self.settings
        with _EvalMode(model):
            return predict_volume(model, image, s.img_size, s.batch_size, s.device, s.amp)

    def _score(self, model: nn.Module, cases: Iterable[dict], on_case: OnCase | None) -> VolumeResult:
        """Items ``{"image": (D, H, W) [0, 1], "label": (D, H, W), "case_name", "spacing"}``;
        the metrics of a case are computed in a worker while the network predicts the next."""
        s = self.settings
        context = multiprocessing.get_context(START_METHOD)
        # Workers ignore SIGTERM / SIGINT: a signal to the whole process group must stop the main
        # process only, which then shuts the pool down (issue 17, point 16).
        executor = ProcessPoolExecutor(s.workers, mp_context=context, initializer=ignore_stop_signals) if s.workers > 0 else None
        futures, names, example = [], [], {}
        try:
            for case in cases:
                prediction = self.predict(model, case["image"])
                label = case["label"].astype(np.uint8)  # (ids below num_classes: the readers check)
                futures.append(
                    _submit(
                        executor,
                        metrics_for_classes,
                        prediction,
                        label,
                        self.num_classes,
                        _case_spacing(s.spacing, case),
                        s.convention,
                    )
                )
                names.append(case["case_name"])
                if not example:
                    example = _volume_example(case, prediction)
                if on_case is not None:
                    on_case(case, prediction)
            # (a torchrun process can get no case: more processes than cases)
            case_scores = np.array([future.result() for future in futures]).reshape(len(futures), self.num_classes - 1, 2)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        return VolumeResult(self.class_names, names, case_scores, s.convention, s.unit, example)


# --------------------------------------------------------------------------------------------
# 2D images: pixel metrics pooled over all images


@dataclass
class ImageResult(_ClassSubset):
    """Pixel metrics of a set of 2D images (``utils.images``).

    Attributes:
        class_names: names of classes 1..C-1.
        cases: image names, in evaluation order.
        counts: int64 (images, C - 1, 4) -- TP, FP, FN, TN of each image and class.
        example: the first image for a picture: ``{"image": (H, W) grey [0, 1], "prediction", "label"}``.
        class_ids: the network's ids of the classes held (None: all, 1..C-1); set by ``select``.
        of_classes: the network's foreground classes (None: those held).
    """

    class_names: list[str]
    cases: list[str]
    counts: np.ndarray
    example: dict = field(default_factory=dict, repr=False)
    class_ids: list[int] | None = None
    of_classes: int | None = None
    BY_CLASS: ClassVar[str] = "counts"

    @property
    def pooled(self) -> np.ndarray:
        """(C - 1, 5): the metrics of ``METRIC_NAMES`` from the counts of all images pooled."""
        return scores(self.counts.sum(axis=0))

    @property
    def per_image(self) -> np.ndarray:
        """(images, C - 1, 5)."""
        return scores(self.counts)

    @property
    def means(self) -> dict[str, float]:
        """Each metric, pooled, averaged over the foreground classes."""
        return {metric: float(value) for metric, value in zip(METRIC_NAMES, self.pooled.mean(axis=0))}

    @property
    def headline(self) -> float:
        """The figure that selects best.pth: mean pooled Dice."""
        return self.means["dice"]

    def log(self, title: str) -> None:
        logger.info(
            "%s (%d images, pixels pooled): %s",
            title,
            len(self.cases),
            ", ".join(f"{metric} {value:.4f}" for metric, value in self.means.items()),
        )
        logger.info("%-14s %s", "class", " ".join(f"{m:>12}" for m in METRIC_NAMES))
        for name, row in zip(self.class_names, self.pooled):
            logger.info("%-14s %s", name, " ".join(f"{100 * v:12.2f}" for v in row))

    def add_to(self, writer: Any, tag: str, step: int) -> None:
        for metric, value in self.means.items():
            writer.add_scalar(f"{tag}/{metric}", value, step)

    def to_dict(self) -> dict:
        totals = self.counts.sum(axis=0)
        return {
            "pooling": "pixels of all images",
            "classes": self._reported(),
            **self.means,
            "per_class": [
                {
                    "class": c,
                    "name": name,
                    **dict(zip(METRIC_NAMES, map(float, row))),
                    **dict(zip(("tp", "fp", "fn", "tn"), map(int, total))),
                }
                for c, name, row, total in zip(self.ids, self.class_names, self.pooled, totals)
            ],
            "cases": [
                {"case": case, **{metric: values[:, k].tolist() for k, metric in enumerate(METRIC_NAMES)}}
                for case, values in zip(self.cases, self.per_image)
            ],
        }

    @classmethod
    def merge(cls, parts: list[ImageResult], order: list[str]) -> ImageResult:
        """One result from the parts that several processes evaluated, images in ``order``."""
        names = [name for part in parts for name in part.cases]
        rows = dict(zip(names, np.concatenate([part.counts for part in parts])))
        example = next((part.example for part in parts if part.example), {})
        first = parts[0]
        counts = np.stack([rows[name] for name in order])
        return cls(first.class_names, list(order), counts, example, first.class_ids, first.of_classes)

    def csv_rows(self) -> list[list]:
        rows: list[list] = [["case", "class", "name", *METRIC_NAMES]]
        for case, values in zip(self.cases, self.per_image):
            rows += [[case, c, name, *(f"{v:.6f}" for v in row)] for c, name, row in zip(self.ids, self.class_names, values)]
        return rows + [
            ["pooled", c, name, *(f"{v:.6f}" for v in row)] for c, name, row in zip(self.ids, self.class_names, self.pooled)
        ]

    def write(self, folder: str | Path, source: dict | None = None) -> Path:
        """Write ``metrics.json`` (full precision; ``source`` names what was scored) and
        ``metrics.csv`` into ``folder``."""
        return _write_metrics(folder, self.to_dict(), self.csv_rows(), source)


class ImageEvaluator(_Evaluator):
    """Predict labelled 2D images at their own size and count their pixels."""

    def predict(self, model: nn.Module, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (H, W) labels."""
        s = self.settings
        with _EvalMode(model):
            return predict_image(model, image, s.img_size, s.device, s.amp)

    def _score(self, model: nn.Module, cases: Iterable[dict], on_case: OnCase | None) -> ImageResult:
        """Items ``{"image": uint8 (H, W, 3), "label": (H, W), "case_name"}``."""
        counts, names, example = [], [], {}
        for case in cases:
            prediction = self.predict(model, case["image"])
            counts.append(confusion(prediction, case["label"], self.num_classes))
            names.append(case["case_name"])
            if not example:
                example = {"image": case["image"].mean(axis=2) / 255.0, "prediction": prediction, "label": case["label"]}
            if on_case is not None:
                on_case(case, prediction)
        return ImageResult(
            self.class_names, names, np.array(counts, np.int64).reshape(len(counts), self.num_classes - 1, 4), example
        )


Evaluator = VolumeEvaluator | ImageEvaluator
EvalResult = VolumeResult | ImageResult


def build_evaluator(info: DatasetInfo, num_classes: int, class_names: list[str], settings: EvalSettings) -> Evaluator:
    """The evaluator for the kind of data of a ``--dataset`` entry."""
    kind = ImageEvaluator if info.kind == IMAGES else VolumeEvaluator
    return kind(num_classes, class_names, settings)
