"""Checkpoints get the permissions of a plain open(), so a shared cluster's colleagues can read them."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_checkpoint_honours_the_umask(umask, mode, tmp_path):
    path = tmp_path / "best.pth"
    old = os.umask(umask)
    try:
        save_checkpoint(path, {"epoch": 3, "w": torch.ones(2)})
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode  # the same as open() gives
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "plain"]  # no temporary file left behind
