"""Compare trained networks on one test set: the published table, paired statistics, a figure.

    python -m utils.compare runs/daeformer runs/smp_unet runs/swinunetr --out compare/
    python -m utils.compare runs/*_seed* --reference runs/daeformer_seed1234

Each argument is a run folder (its ``test/metrics.json``, as test.py writes it), a folder holding
a ``metrics.json``, or a ``metrics.json``. A run's network and cost come from its ``args.json``
(a recorded ``network_cost``, else measured by :func:`utils.profile.network_cost` on the network
rebuilt from ``args.json`` or the run's checkpoint, untrained: the cost does not depend on the
weights). Runs whose ``args.json`` differ only in the seed, the fold (data paths and lists) or
in how they were run (workers, device, output folder) are one group: the table gives mean +- sd
over them and the paired tests use each case's mean over them.

Writes into ``--out``: ``table.md``, ``table.csv``, ``table.tex`` (the published layout: network,
parameters, GMACs, mean DSC, mean HD95, DSC per class), ``stats.md`` / ``stats.csv`` (for each
pair of groups, or each against ``--reference``: the mean per-case difference first minus second
in mean Dice and in mean HD95, its bootstrap 95 % interval and the Wilcoxon signed-rank p),
``compare.json`` (every number) and ``compare.png``. Volume results are compared by Dice and
HD95; 2D image results by Dice (pooled over pixels in the table, per image in the tests).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.catalog import IMAGE_CHANNELS, IMAGES, VOLUMES, dataset_info
from utils.checkpoint import BEST, LAST
from utils.errors import UserError
from utils.evaluation import METRICS_JSON
from utils.profile import COST_KEY
from utils.runs import ARGS_FILE, TEST_FOLDER

CHECKPOINTS = (BEST, LAST)  # the network of a run that recorded no cost, in this order
# Settings that may differ between runs of one group: the seed, the fold (its data and lists),
# and how the run was executed rather than what was trained.
NOT_THE_RECIPE = frozenset(
    {
        "run_id",
        "seed",
        "fold",
        "output_dir",
        "root_path",
        "test_path",
        "list_dir",
        "train_list_sha256",
        "num_workers",
        "eval_workers",
        "eval_interval",
        "eval_batch_size",
        "device",
        "resume",
        "resume_accept_changes",
        "overwrite",
        "dist_timeout",
        "compile",
        COST_KEY,
    }
)
BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same interval every time
CONFIDENCE = 0.95
OUTPUTS = ("table.md", "table.csv", "table.tex", "stats.md", "stats.csv", "compare.json", "compare.png")


@dataclass
class Run:
    """One run's test results.

    Attributes:
        source: the metrics.json read.
        folder: the run's folder (where args.json and checkpoints are), if found.
        args: its args.json, or {}.
        kind: VOLUMES or IMAGES.
        class_names: classes 1..C-1.
        cases: case names, in the file's order.
        case_dice: (cases, C - 1) Dice of each case and class.
        case_hd95: (cases, C - 1) HD95, or None for images.
        mean_dice, mean_hd95: the file's headline numbers (mean_hd95 None for images).
        class_dice: (C - 1,) the file's per-class Dice (pooled over pixels for images).
        class_hd95: (C - 1,) or None.
        nan_mean: the file's convention averages with nanmean.
        scoring: what must agree between runs to compare them (convention, unit).
    """

    source: Path
    folder: Path | None
    args: dict[str, Any]
    kind: str
    class_names: list[str]
    cases: list[str]
    case_dice: np.ndarray
    case_hd95: np.ndarray | None
    mean_dice: float
    mean_hd95: float | None
    class_dice: np.ndarray
    class_hd95: np.ndarray | None
    nan_mean: bool
    scoring: dict[str, Any]
    cost: dict[str, float] | None = None

    def case_means(self, values: np.ndarray) -> np.ndarray:
        """(cases,): each case's mean over the classes, averaged as the file's convention does."""
        return np.nanmean(values, axis=1) if self.nan_mean else values.mean(axis=1)


@dataclass
class Group:
    """Runs of one network and recipe (several seeds or folds), compared as one."""

    label: str
    runs: list[Run]
    module: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def first(self) -> Run:
        return self.runs[0]

    def spread(self, values: Sequence[float]) -> tuple[float, float | None]:
        """Mean and sample standard deviation over the runs (None with one run)."""
        array = np.asarray(values, dtype=float)
        return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)

    def case_mean_dice(self) -> np.ndarray:
        """(cases,): each case's mean Dice over classes, then over the group's runs."""
        return np.mean([run.case_means(run.case_dice) for run in self.runs], axis=0)

    def case_mean_hd95(self) -> np.ndarray | None:
        if self.first.case_hd95 is None:
            return None
        return np.mean([run.case_means(run.case_hd95) for run in self.runs], axis=0)


# --------------------------------------------------------------------------------------------
# Reading runs


def find_metrics(path: Path) -> tuple[Path, Path | None]:
    """(metrics.json, the run folder or None) for an argument of the command."""
    if path.is_file():
        metrics = path
    elif (path / TEST_FOLDER / METRICS_JSON).is_file():
        metrics = path / TEST_FOLDER / METRICS_JSON
    elif (path / METRICS_JSON).is_file():
        metrics = path / METRICS_JSON
    else:
        raise UserError(
            f"{path}: no {TEST_FOLDER}/{METRICS_JSON} or {METRICS_JSON} there; evaluate the run first "
            f"(python test.py --output_dir {path}) or pass the metrics.json itself"
        )
    # the run folder: the nearest with args.json -- RUN/test/ (test.py) or RUN/eval/epoch_N/ (train.py)
    folder = next((f for f in list(metrics.parents)[:3] if (f / ARGS_FILE).is_file()), None)
    return metrics, folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_run(path: str | Path) -> Run:
    """A run's test results, from any form :func:`find_metrics` accepts."""
    source, folder = find_metrics(Path(path))
    metrics = _read_json(source)
    args = _read_json(folder / ARGS_FILE) if folder is not None else {}
    try:
        cases = [case["case"] for case in metrics["cases"]]
        class_names = [entry["name"] for entry in metrics["per_class"]]
        case_dice = np.array([case["dice"] for case in metrics["cases"]], dtype=float).reshape(len(cases), len(class_names))
        class_dice = np.array([entry["dice"] for entry in metrics["per_class"]], dtype=float)
        if "mean_hd95" in metrics:
            kind = VOLUMES
            hd95 = [case["hd95"] for case in metrics["cases"]]
            case_hd95 = np.array(hd95, dtype=float).reshape(len(cases), len(class_names))
            class_hd95 = np.array([entry["hd95"] for entry in metrics["per_class"]], dtype=float)
            mean_dice, mean_hd95 = float(metrics["mean_dice"]), float(metrics["mean_hd95"])
            scoring = {"convention": metrics["convention"], "hd95_unit": metrics["hd95_unit"]}
        else:
            kind, case_hd95, class_hd95, mean_hd95 = IMAGES, None, None, None
            mean_dice = float(metrics["dice"])  # pooled over the pixels of all images
            scoring = {"pooling": metrics.get("pooling")}
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{source} is not a metrics.json of test.py (missing or malformed {error})") from None
    if not cases:
        raise UserError(f"{source} holds no cases; evaluate on a list with at least one case")
    if len(cases) != len(set(cases)):
        raise UserError(f"{source} lists a case twice; evaluate again")
    return Run(
        source=source,
        folder=folder,
        args=args,
        kind=kind,
        class_names=class_names,
        cases=cases,
        case_dice=case_dice,
        case_hd95=case_hd95,
        mean_dice=mean_dice,
        mean_hd95=mean_hd95,
        class_dice=class_dice,
        class_hd95=class_hd95,
        nan_mean=scoring.get("convention") == "nan",
        scoring=scoring,
    )


def check_comparable(runs: Sequence[Run]) -> None:
    """Every run scored the same cases and classes the same way, or a one-line error."""
    first = runs[0]
    for run in runs[1:]:
        if run.kind != first.kind:
            raise UserError(f"{first.source} holds {first.kind} results but {run.source} {run.kind}; compare like with like")
        if set(run.cases) != set(first.cases):
            only_first = sorted(set(first.cases) - set(run.cases))
            only_run = sorted(set(run.cases) - set(first.cases))
            raise UserError(
                f"{first.source} and {run.source} were evaluated on different cases: only in the first: "
                f"{', '.join(only_first) or 'none'}; only in the second: {', '.join(only_run) or 'none'}; "
                "evaluate every run on the same test list"
            )
        if run.class_names != first.class_names:
            raise UserError(f"{first.source} and {run.source} score different classes: {first.class_names} vs {run.class_names}")
        if run.scoring != first.scoring:
            raise UserError(f"{first.source} and {run.source} were scored differently ({first.scoring} vs {run.scoring})")


def aligned(run: Run, order: Sequence[str]) -> Run:
    """``run`` with its cases in ``order`` (the per-case tests pair case with case)."""
    index = [run.cases.index(name) for name in order]
    run.cases = list(order)
    run.case_dice = run.case_dice[index]
    if run.case_hd95 is not None:
        run.case_hd95 = run.case_hd95[index]
    return run


def recipe(run: Run) -> str:
    """What must be equal for two runs to be one group: the args.json without seed and fold."""
    if not run.args:
        return f"file:{run.source.resolve()}"  # no args.json: a group of its own
    return json.dumps({k: v for k, v in run.args.items() if k not in NOT_THE_RECIPE}, sort_keys=True)


def network_label(module: str | None, kwargs: dict[str, Any], fallback: str) -> str:
    """``Unet (resnet18)``: the class, and the encoder where a library network names one."""
    if not module:
        return fallback
    name = module.rpartition(".")[2]
    encoder = kwargs.get("encoder_name")
    return f"{name} ({encoder})" if encoder else name


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by :func:`recipe`, in the order of their first run; labels made unique."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = recipe(run)
        if key not in groups:
            module = run.args.get("module")
            kwargs = run.args.get("model_kwargs") or {}
            fallback = (run.folder or run.source.parent).name
            groups[key] = Group(network_label(module, kwargs, fallback), [], module, kwargs)
        groups[key].runs.append(run)
    result = list(groups.values())
    counts: dict[str, int] = {}
    for group in result:
        counts[group.label] = counts.get(group.label, 0) + 1
    for group in result:
        if counts[group.label] > 1:  # the same network under two recipes: name the run folder
            group.label = f"{group.label} [{(group.first.folder or group.first.source.parent).name}]"
    return result


# --------------------------------------------------------------------------------------------
# Network cost


def measure_cost(run: Run) -> dict[str, float] | None:
    """The run's recorded ``network_cost``, else measured on its network rebuilt from args.json or
    its checkpoint (untrained weights: the cost does not depend on them); None if neither is there."""
    if isinstance(run.args.get(COST_KEY), dict):
        return run.args[COST_KEY]
    from utils.loader import build_network
    from utils.profile import network_cost

    module, kwargs, img_size = run.args.get("module"), run.args.get("model_kwargs"), run.args.get("img_size")
    if (module is None or kwargs is None) and run.folder is not None:
        checkpoint = next((run.folder / name for name in CHECKPOINTS if (run.folder / name).is_file()), None)
        if checkpoint is not None:
            from utils.checkpoint import is_self_describing, load_checkpoint

            payload = load_checkpoint(checkpoint)
            if is_self_describing(payload):
                module, kwargs = payload["module"], payload["model_kwargs"]
                img_size = img_size or payload["args"].get("img_size")
    if module is None or kwargs is None or img_size is None:
        return None
    try:
        channels = dataset_info(run.args.get("dataset", "Synapse")).channels  # as the run was fed
    except ValueError:  # its dataset.json is not on this machine: the kind of data says
        channels = IMAGE_CHANNELS if run.kind == IMAGES else 1
    # untrained and without pretrained weights: the cost does not depend on them
    return network_cost(build_network(module, kwargs, pretrained=False), channels, int(img_size))


# --------------------------------------------------------------------------------------------
# Paired statistics


@dataclass(frozen=True)
class Paired:
    """Mean of the per-case differences ``first - second``, its bootstrap interval and the
    Wilcoxon signed-rank p-value."""

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    cases: int


def paired_test(first: np.ndarray, second: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Paired:
    """Compare two per-case score vectors of the same cases.

    The interval is the percentile bootstrap of the mean difference (cases resampled with
    replacement, ``samples`` times, a fixed ``seed``); the p-value is scipy's two-sided Wilcoxon
    signed-rank test. When every difference is zero there is no evidence of any difference:
    p = 1 and the interval is [0, 0] (set here, not left to scipy's handling of an all-zero sample).
    """
    from scipy.stats import wilcoxon

    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if differences.ndim != 1 or len(differences) == 0:
        raise UserError(f"the paired test needs two equally long per-case vectors, got {np.shape(first)} and {np.shape(second)}")
    if not np.all(np.isfinite(differences)):
        return Paired(math.nan, math.nan, math.nan, math.nan, len(differences))
    if np.all(differences == 0):
        return Paired(0.0, 0.0, 0.0, 1.0, len(differences))
    rng = np.random.default_rng(seed)
    resampled = differences[rng.integers(0, len(differences), size=(samples, len(differences)))].mean(axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    p_value = float(wilcoxon(differences).pvalue)
    return Paired(float(differences.mean()), float(low), float(high), p_value, len(differences))


def comparisons(groups: Sequence[Group], reference: Group | None) -> list[dict[str, Any]]:
    """The paired tests: each group against ``reference``, or every pair in the given order."""
    if reference is not None:
        pairs = [(group, reference) for group in groups if group is not reference]
    else:
        pairs = list(itertools.combinations(groups, 2))
    found = []
    for first, second in pairs:
        entry: dict[str, Any] = {"first": first.label, "second": second.label}
        entry["dice"] = asdict(paired_test(first.case_mean_dice(), second.case_mean_dice()))
        hd_first, hd_second = first.case_mean_hd95(), second.case_mean_hd95()
        entry["hd95"] = None if hd_first is None or hd_second is None else asdict(paired_test(hd_first, hd_second))
        found.append(entry)
    return found


# --------------------------------------------------------------------------------------------
# The table


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group, every number at full precision (sd None for a single run)."""
    rows = []
    for group in groups:
        runs = group.runs
        dice, dice_sd = group.spread([run.mean_dice for run in runs])
        row: dict[str, Any] = {
            "network": group.label,
            "module": group.module,
            "runs": len(runs),
            "seeds": [run.args.get("seed") for run in runs],
            "sources": [str(run.source) for run in runs],
            "params": group.first.cost["params"] if group.first.cost else None,
            "gmacs": group.first.cost["gmacs"] if group.first.cost else None,
            "mean_dice": dice,
            "mean_dice_sd": dice_sd,
            "mean_hd95": None,
            "mean_hd95_sd": None,
        }
        if group.first.mean_hd95 is not None:
            row["mean_hd95"], row["mean_hd95_sd"] = group.spread([run.mean_hd95 for run in runs])
        per_class = np.array([run.class_dice for run in runs])
        row["class_dice"] = per_class.mean(axis=0).tolist()
        row["class_dice_sd"] = per_class.std(axis=0, ddof=1).tolist() if len(runs) > 1 else None
        rows.append(row)
    return rows


def _cell(value: float | None, sd: float | None, scale: float = 1.0, pm: str = " ± ") -> str:
    if value is None:
        return "n/a"
    text = f"{scale * value:.2f}"
    return text if sd is None else f"{text}{pm}{scale * sd:.2f}"


def _params(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.2f}"


def _gmacs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table_cells(rows: Sequence[dict[str, Any]], class_names: Sequence[str], volumes: bool, pm: str) -> list[list[str]]:
    """The table as text cells: header first. Dice in %, HD95 in the file's unit."""
    header = ["Network", "Params (M)", "GMACs", "DSC (%)"] + (["HD95"] if volumes else []) + list(class_names)
    cells = [header]
    for row in rows:
        sds = row["class_dice_sd"] or [None] * len(class_names)
        line = [
            row["network"],
            _params(row["params"]),
            _gmacs(row["gmacs"]),
            _cell(row["mean_dice"], row["mean_dice_sd"], 100, pm),
        ]
        if volumes:
            line.append(_cell(row["mean_hd95"], row["mean_hd95_sd"], 1, pm))
        line += [_cell(value, sd, 100, pm) for value, sd in zip(row["class_dice"], sds)]
        cells.append(line)
    return cells


def markdown(cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex(cells: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular (the cells hold ``$\\pm$`` already where a group has several runs)."""
    header = [_latex_escape(cell) for cell in cells[0]]
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for row in cells[1:]:
        lines.append(" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"])


def write_csv(path: Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> None:
    """Full-precision numbers, Dice as fractions (as in metrics.json)."""
    header = ["network", "runs", "params", "gmacs", "mean_dice", "mean_dice_sd", "mean_hd95", "mean_hd95_sd"]
    header += [f"dice_{name}" for name in class_names]
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for row in rows:
            values = [row[key] for key in header[:8]] + list(row["class_dice"])
            writer.writerow(["" if value is None else repr(value) if isinstance(value, float) else value for value in values])


def stats_cells(entries: Sequence[dict[str, Any]], volumes: bool) -> list[list[str]]:
    header = ["First", "Second", "Cases", "Δ DSC (%) [95% CI]", "p (Wilcoxon)"]
    header += ["Δ HD95 [95% CI]", "p (Wilcoxon)"] if volumes else []
    cells = [header]
    for entry in entries:
        dice = entry["dice"]
        line = [entry["first"], entry["second"], str(dice["cases"]), _interval(dice, 100), _p(dice["p_value"])]
        if volumes and entry["hd95"] is not None:
            line += [_interval(entry["hd95"], 1), _p(entry["hd95"]["p_value"])]
        cells.append(line)
    return cells


def _interval(stats: dict[str, float], scale: float) -> str:
    return f"{scale * stats['mean_difference']:+.2f} [{scale * stats['ci_low']:+.2f}, {scale * stats['ci_high']:+.2f}]"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def write_stats_csv(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    metrics = ("dice", "hd95")
    fields = ("mean_difference", "ci_low", "ci_high", "p_value", "cases")
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["first", "second", *(f"{m}_{f}" for m in metrics for f in fields)])
        for entry in entries:
            values = [entry[m][f] if entry[m] else "" for m in metrics for f in fields]
            writer.writerow([entry["first"], entry["second"], *(repr(v) if isinstance(v, float) else v for v in values)])


# --------------------------------------------------------------------------------------------
# The figure, drawn with PIL (it comes with torchvision): matplotlib is not a requirement, and two
# simple panels do not justify adding one for every user.

# Okabe-Ito colours: told apart with the common colour-vision deficiencies.
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0), (240, 228, 66))
FIGURE_HEIGHT, MARGIN, FONT_SIZE = 520, 60, 14
CLASS_SLOT, CASE_SLOT = 95, 120  # pixels per class cluster (left) and per network (right)
GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def comparison_figure(labels: Sequence[str], class_names: Sequence[str], class_dice: np.ndarray, case_dice: np.ndarray) -> Any:
    """Left: Dice per class, one bar per network. Right: each case's mean Dice under every
    network, the points of one case joined (paired), the network's mean as a black tick.

    Args:
        labels: the networks.
        class_names: classes 1..C-1.
        class_dice: (networks, C - 1) Dice in [0, 1].
        case_dice: (networks, cases) per-case mean Dice in [0, 1].

    Returns:
        A PIL RGB image.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    small = ImageFont.load_default(size=FONT_SIZE - 2)
    left_width = CLASS_SLOT * len(class_names)
    right_width = CASE_SLOT * len(labels)
    width = MARGIN + left_width + 2 * MARGIN + right_width + MARGIN // 2
    image = Image.new("RGB", (width, FIGURE_HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    top, bottom = 2 * MARGIN, FIGURE_HEIGHT - MARGIN
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * float(np.clip(np.nan_to_num(value), 0.0, 1.0))

    def axes(x0: int, x1: int, title: str) -> None:
        for tick in GRID:
            y = y_of(tick)
            draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
            draw.text((x0 - 6, y), f"{tick:.1f}", fill="black", font=small, anchor="rm")
        draw.line([(x0, top), (x0, bottom), (x1, bottom)], fill="black")
        draw.text(((x0 + x1) / 2, top - 14), title, fill="black", font=font, anchor="md")

    x0 = MARGIN
    axes(x0, x0 + left_width, "Dice per class")
    bar = (CLASS_SLOT - 16) / max(1, len(labels))
    for c, name in enumerate(class_names):
        start = x0 + c * CLASS_SLOT + 8
        for n, colour in enumerate(colours):
            left = start + n * bar
            draw.rectangle([left, y_of(class_dice[n, c]), left + bar - 1, bottom], fill=colour)
        draw.text((x0 + (c + 0.5) * CLASS_SLOT, bottom + 6), name, fill="black", font=small, anchor="ma")

    x1 = x0 + left_width + 2 * MARGIN
    axes(x1, x1 + right_width, "Mean Dice per case (paired)")
    centres = [x1 + (n + 0.5) * CASE_SLOT for n in range(len(labels))]
    for case in range(case_dice.shape[1]):
        draw.line([(x, y_of(case_dice[n, case])) for n, x in enumerate(centres)], fill=(170, 170, 170), width=1)
    for n, (x, colour) in enumerate(zip(centres, colours)):
        for value in case_dice[n]:
            y = y_of(value)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline="black")
        mean = y_of(float(np.mean(case_dice[n])))
        draw.line([(x - 18, mean), (x + 18, mean)], fill="black", width=3)
        draw.text((x, bottom + 6), labels[n], fill="black", font=small, anchor="ma")

    # the legend, across the top
    x = MARGIN
    for label, colour in zip(labels, colours):
        draw.rectangle([x, 18, x + 14, 32], fill=colour)
        draw.text((x + 20, 25), label, fill="black", font=font, anchor="lm")
        x += 40 + int(draw.textlength(label, font=font))
    return image


# --------------------------------------------------------------------------------------------
# The command


def compare(paths: Sequence[str | Path], out: str | Path, reference: str | Path | None = None) -> dict[str, Any]:
    """Read, group, test and write everything into ``out``; returns what compare.json holds."""
    runs = [read_run(path) for path in paths]
    if len(runs) < 2:
        raise UserError("compare needs at least two runs (run folders or metrics.json files)")
    check_comparable(runs)
    for run in runs[1:]:
        aligned(run, runs[0].cases)
    groups = group_runs(runs)
    for group in groups:  # (one network and recipe: one cost, measured once)
        try:
            group.first.cost = measure_cost(group.first)
        except UserError as error:  # e.g. its library is not installed here: the table says n/a
            print(f"warning: {group.label}: no parameter count or GMACs ({error})", file=sys.stderr)
    reference_group = None
    if reference is not None:
        wanted = find_metrics(Path(reference))[0].resolve()
        reference_group = next((g for g in groups if any(r.source.resolve() == wanted for r in g.runs)), None)
        if reference_group is None:
            raise UserError(f"--reference {reference} is not one of the runs compared; list it among them too")
    if len(groups) < 2:
        raise UserError(f"all {len(runs)} runs are one network and recipe (seeds or folds of it): nothing to compare them with")

    first = runs[0]
    volumes = first.kind == VOLUMES
    rows = table_rows(groups)
    entries = comparisons(groups, reference_group)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(table_cells(rows, first.class_names, volumes, " ± ")) + "\n")
    (out / "table.tex").write_text(latex(table_cells(rows, first.class_names, volumes, r" $\pm$ ")) + "\n")
    write_csv(out / "table.csv", rows, first.class_names)
    (out / "stats.md").write_text(markdown(stats_cells(entries, volumes)) + "\n")
    write_stats_csv(out / "stats.csv", entries)
    result = {
        "kind": first.kind,
        "scoring": first.scoring,
        "class_names": first.class_names,
        "cases": first.cases,
        "table": rows,
        "comparisons": entries,
        "case_mean_dice": {group.label: group.case_mean_dice().tolist() for group in groups},
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE},
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    comparison_figure(
        [group.label for group in groups],
        first.class_names,
        np.array([row["class_dice"] for row in rows]),
        np.array([group.case_mean_dice() for group in groups]),
    ).save(out / "compare.png")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="run folders (RUN/test/metrics.json), folders with a metrics.json, or metrics.json files"
    )
    parser.add_argument("--out", default="compare", help="folder for the table, statistics and figure (default ./compare)")
    parser.add_argument("--reference", help="test every other network against this run (default: every pair)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = compare(args.runs, args.out, args.reference)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    volumes = result["kind"] == VOLUMES
    print(markdown(table_cells(result["table"], result["class_names"], volumes, " ± ")))
    print()
    print(markdown(stats_cells(result["comparisons"], volumes)))
    print(f"\n{len(result['cases'])} case(s); written to {args.out}: {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
