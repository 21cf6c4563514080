"""The Python API of docs/api.md runs as written and predicts exactly as test.py does."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datasets.synthetic.isic import generate_dataset as generate_images
from tests.conftest import REPO, load_test_script, phantom_test_args, tiny_isic_args
from utils.predictor import Predictor


def readme_example() -> str:
    section = (REPO / "docs" / "api.md").read_text()
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_gives_test_py_s_numbers(phantom, trained_run, tmp_path):
    code = readme_example().replace("runs/demo/last.pth", str(trained_run / "last.pth"))
    code = code.replace("data/phantom", str(phantom["out_dir"]))
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documentation's own example
    assert (
        load_test_script().main(phantom_test_args(phantom, trained_run / "last.pth", tmp_path, "--workers", "0", "--is_savenii"))
        == 0
    )
    tested = json.loads((tmp_path / "metrics.json").read_text())["cases"][0]
    result = namespace["result"]
    assert result.cases == [tested["case"]]
    np.testing.assert_allclose(result.scores[0, :, 0], tested["dice"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.scores[0, :, 1], tested["hd95"], rtol=0, atol=1e-12)
    import SimpleITK as sitk  # test.py's saved prediction of the same case

    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{tested['case']}_pred.nii.gz")))
    np.testing.assert_array_equal(namespace["labels"], saved.astype(np.uint8))


def test_predict_refuses_an_array_of_the_wrong_shape(trained_run):
    predictor = Predictor.from_checkpoint(trained_run / "last.pth")
    with pytest.raises(ValueError, match=r"predict takes a \(D, H, W\) volume in \[0, 1\]; got an array of shape \(32, 32\)"):
        predictor.predict(np.zeros((32, 32), np.float32))


def test_test_py_segments_a_folder_of_unlabeled_images(tmp_path):
    import train as train_script

    data = generate_images(tmp_path / "isic", seed=4, size=40, train_images=4, val_images=2, test_images=2)
    run = tmp_path / "run"
    assert train_script.main(tiny_isic_args(data, run, eval_interval=0)) == 0
    new = tmp_path / "new"
    new.mkdir()
    for name in data["test"]:
        (new / f"{name}.jpg").write_bytes((data["out_dir"] / "images" / f"{name}.jpg").read_bytes())
    out = tmp_path / "out"
    assert load_test_script().main(["--ckpt", str(run / "last.pth"), "--volume_path", str(new), "--test_save_dir", str(out)]) == 0
    predictor = Predictor.from_checkpoint(run / "last.pth")
    from PIL import Image

    for name in data["test"]:
        rgb = np.asarray(Image.open(new / f"{name}.jpg").convert("RGB"))
        written = np.asarray(Image.open(out / f"{name}_pred.png"))
        np.testing.assert_array_equal(written, predictor.predict(rgb))
        assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (*rgb.shape[:2], 3)
    assert not (out / "metrics.json").exists()
