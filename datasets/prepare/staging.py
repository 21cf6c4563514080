"""Conversions that complete or leave nothing: every converter writes into a staging folder
beside ``--out`` and renames it to ``--out`` only when the whole conversion succeeded.

A converter stopped half-way (a bad label in the fifth case, Ctrl-C, a node lost) used to leave
the previous conversion's ``dataset.json`` and lists beside slices rewritten with the new
settings, and nothing told the two apart. Now:

- a failed conversion removes its staging folder and leaves ``--out`` as it was; one killed
  outright leaves ``.OUT.staging-XXXX`` beside it, which the data doctor reports;
- a successful one replaces ``--out`` as a whole (never file by file), and only when ``--out``
  is empty or holds nothing but what a conversion writes, so a user's own files are never
  deleted;
- ``OUT/conversion.json`` (the completion marker) names the converter and the sha256 of every
  list file it wrote. Lists written outside ``--out`` (``--list_dir``) can only be written after
  the rename; if that is interrupted, or another conversion later rewrites them, the doctor
  sees the hashes differ and reports a mixed conversion.

Needs neither SimpleITK nor torch, so the 2D image converter uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from datasets.catalog import DATASET_JSON
from datasets.common import DataError
from datasets.isic import IMAGE_DIR, MASK_DIR
from datasets.lists import LIST_DIR, TEST_DIR, TRAIN_DIR

CONVERSION_MARKER = "conversion.json"
STAGING_TAG = ".staging-"  # staging folder: OUT.parent / ".OUT.staging-XXXX"
REPLACED_TAG = ".replaced-"  # the previous conversion, between the two renames of the swap
# What a converter writes into --out; a folder holding anything else is not replaced.
CONVERSION_ENTRIES = frozenset({TRAIN_DIR, TEST_DIR, LIST_DIR, IMAGE_DIR, MASK_DIR, DATASET_JSON, CONVERSION_MARKER})


def list_text(names: Sequence[str]) -> str:
    """The text of a list file, as ``datasets.lists.write_list`` writes it."""
    return "".join(name + "\n" for name in names)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def leftover_folders(out: Path) -> list[Path]:
    """Staging or replaced folders of conversions into ``out`` that never finished."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(
        p
        for p in out.parent.iterdir()
        if p.is_dir() and p.name.startswith((f".{out.name}{STAGING_TAG}", f".{out.name}{REPLACED_TAG}"))
    )


def _within(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` if it lies inside it, else None."""
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


class Stage:
    """The staging folder of one conversion into ``out``.

    Attributes:
        out: the final folder.
        folder: where the converter writes everything meant for ``out``.
    """

    def __init__(self, out: Path, folder: Path) -> None:
        self.out = out
        self.folder = folder
        self.lists: dict[str, str] = {}  # key in the marker -> sha256
        self.outside: dict[Path, str] = {}  # list files outside out -> text, written after the rename

    def list_file(self, final_path: str | Path, names: Sequence[str]) -> None:
        """Write the list ``final_path`` (its place once the conversion is complete): inside
        ``out`` into the staging folder now, elsewhere after the rename."""
        final_path = Path(final_path)
        text = list_text(names)
        inside = _within(final_path, self.out)
        if inside is not None:
            target = self.folder / inside
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self.lists[inside.as_posix()] = sha256_text(text)
        else:
            self.outside[final_path] = text
            self.lists[str(final_path.resolve())] = sha256_text(text)

    def _write_marker(self, converter: str) -> None:
        marker = {"converter": converter, "complete": True, "lists": self.lists}
        (self.folder / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _check_replaceable(out: Path, flag: str, replace: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{flag} {out} is a file; pass a folder to write the conversion into")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not replace:
        raise DataError(f"{flag} {out} is not empty; choose a new folder")
    foreign = [name for name in entries if name not in CONVERSION_ENTRIES]
    if foreign:
        raise DataError(
            f"{flag} {out} holds {', '.join(foreign[:3])}"
            + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            + ", which no conversion writes; choose a new or empty folder (an earlier conversion there is replaced as a whole)"
        )


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _swap(staging: Path, out: Path) -> None:
    """Put ``staging`` in place of ``out``; the previous content is removed only once the new
    one is in place."""
    if not out.exists():
        staging.rename(out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        staging.rename(out)
        return
    replaced = Path(tempfile.mkdtemp(prefix=f".{out.name}{REPLACED_TAG}", dir=out.parent))
    replaced.rmdir()  # only its unique name is wanted: rename needs the target absent
    out.rename(replaced)
    staging.rename(out)
    shutil.rmtree(replaced, ignore_errors=True)


@contextmanager
def staged_output(out: str | Path, converter: str, replace: bool = True, flag: str = "--out") -> Iterator[Stage]:
    """Stage a conversion into ``out``; rename it into place when the block completes.

    Args:
        out: the output folder.
        converter: the module that converts (recorded in the marker), e.g. ``datasets.prepare.nifti``.
        replace: replace an earlier conversion in ``out``; False refuses any non-empty ``out``.
        flag: the flag naming ``out`` in messages.

    Yields:
        The stage: write into ``stage.folder``, lists through ``stage.list_file``.

    Raises:
        DataError: ``out`` is a file, or holds files no conversion writes (or anything, with
            ``replace=False``). Any error inside the block removes the staging folder and leaves
            ``out`` as it was.
    """
    out = Path(out)
    _check_replaceable(out, flag, replace)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_TAG}", dir=out.parent))
    stage = Stage(out, staging)
    try:
        yield stage
        stage._write_marker(converter)
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for path, text in stage.outside.items():
        _write_atomically(path, text)


def conversion_problems(root: Path) -> list[tuple[str, Path, str, str]]:
    """What the data doctor reports about the conversion in ``root``: ``(kind, path, message, fix)``
    for a conversion that never finished and for lists that are not those the conversion wrote."""
    root = Path(root)
    found = []
    for leftover in leftover_folders(root):
        stopped = STAGING_TAG in leftover.name
        found.append(
            (
                "incomplete conversion",
                leftover,
                f"a conversion into {root} stopped before it completed"
                + (
                    f" ({root} still holds the previous complete one, if any)" if stopped else " while replacing the previous one"
                ),
                f"delete {leftover.name}, or run the converter again",
            )
        )
    marker_path = root / CONVERSION_MARKER
    if not marker_path.is_file():
        return found
    try:
        marker = json.loads(marker_path.read_text())
        lists = dict(marker["lists"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        found.append(
            ("mixed conversion", marker_path, f"is not a readable conversion marker ({error})", "run the converter again")
        )
        return found
    converter = marker.get("converter", "a converter")
    for key, digest in lists.items():
        path = Path(key) if Path(key).is_absolute() else root / key
        if not path.is_file():
            message = f"is missing, but the conversion in {root} ({converter}) wrote it: it stopped before its lists were written"
        elif sha256_text(path.read_text()) != digest:
            message = (
                f"is not the list the conversion in {root} ({converter}) wrote: another conversion or an edit replaced "
                "it, so the lists and the data may not match"
            )
        else:
            continue
        found.append(
            (
                "mixed conversion",
                path,
                message,
                f"run the converter again (if you edited the list on purpose, delete {marker_path})",
            )
        )
    return found
