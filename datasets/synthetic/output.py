"""The output folder of a synthetic-data generator.

A generator marks the folder it writes with a ``.synthetic-dataset`` file that names the
generator, and writes only into an empty folder or one its own earlier run marked. So
``--overwrite`` can replace a phantom and can never delete real data that happens to share its
layout (``DATA=data/Synapse bash demo.sh`` once deleted the real Synapse files).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

MARKER = ".synthetic-dataset"


def prepare_output(out_dir: str | Path, generator: str, owned: Sequence[str], overwrite: bool) -> Path:
    """Make ``out_dir`` ready for ``generator`` and mark it as generated.

    Args:
        out_dir: the ``--out`` folder.
        generator: the generator's module, e.g. ``datasets.synthetic.synapse``; written into
            the marker.
        owned: names of the files and folders the generator writes directly inside ``out_dir``;
            only these are ever deleted.
        overwrite: delete the ``owned`` entries an earlier run of ``generator`` left.

    Returns:
        ``out_dir`` as a Path, existing and marked.

    Raises:
        ValueError: (one line naming ``--out``) the folder is not empty and was not made by
            ``generator``, or holds its data and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; choose a folder")
    marker = out_dir / MARKER
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not marker.is_file():
            raise ValueError(
                f"--out {out_dir} is not empty and has no {MARKER} file, so it may hold real data; "
                "nothing was deleted -- choose an empty or new folder"
            )
        maker = marker.read_text().strip()
        if maker != generator:
            raise ValueError(
                f"--out {out_dir} holds a data set written by {maker or 'an unknown generator'}, "
                f"not {generator}; nothing was deleted -- choose another folder"
            )
        present = [out_dir / name for name in owned if (out_dir / name).exists() or (out_dir / name).is_symlink()]
        if present and not overwrite:
            raise ValueError(
                f"--out {out_dir} already holds {', '.join(p.name for p in present)} from an earlier run; "
                "pass --overwrite to replace them or choose an empty folder"
            )
        for path in present:
            # A link is removed, never followed: what it points to is not ours.
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(generator + "\n")
    return out_dir
