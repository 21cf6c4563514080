"""utils.inference.predict_volume on hand-computed cases: ties between classes, batch sizes."""

import numpy as np
import pytest
import torch
from torch import nn

from utils.inference import predict_volume

SIZE = 8


class TiedClasses(nn.Module):
    """5 class scores per pixel: where the input is above 0 (intensity > 0.5), classes 3 and 4
    tie at the maximum 1.0; elsewhere class 1 scores 2.0 and classes 3 and 4 still score 1.0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 5, *x.shape[2:])
        logits[:, 3] = 1.0
        logits[:, 4] = 1.0
        logits[:, 1] = torch.where(x[:, 0] > 0, 0.0, 2.0)
        return logits


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_a_tie_goes_to_the_first_class_as_argmax_gives_it(batch_size):
    image = np.full((5, SIZE, SIZE), 0.1, dtype=np.float32)
    image[:, :, : SIZE // 2] = 0.9  # left half bright: the 3-4 tie
    labels = predict_volume(TiedClasses(), image, (SIZE, SIZE), batch_size)
    expected = np.ones(image.shape, dtype=np.uint8)
    expected[:, :, : SIZE // 2] = 3
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)


class Float64Scores(nn.Module):
    """Two classes whose float64 scores differ by 1e-12 -- equal once rounded to float32: class 1
    wins only if the comparison keeps the network's own dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=torch.float64)
        logits[:, 0] = 1.0
        logits[:, 1] = 1.0 + 1e-12
        return logits


def test_the_class_comparison_keeps_the_networks_dtype():
    image = np.full((3, SIZE, SIZE), 0.5, dtype=np.float32)
    np.testing.assert_array_equal(predict_volume(Float64Scores(), image, (SIZE, SIZE), 2), np.ones(image.shape, np.uint8))
