"""The served form: BatchNorm and the input normalisation folded, channels-last weights, a flat
forward pass; it computes what the module network computes."""

import pytest
import torch

from multidomain.arch import ArchSpec
from multidomain.fold import _take, fold_network
from multidomain.network import ResNet26
from multidomain.preprocess import normalize_batch
from tests.artifacts import randomise_batchnorm

ARCH = ArchSpec(width_mult=0.125, image_size=16)
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def test_folded_network_computes_the_module_network() -> None:
    torch.manual_seed(0)
    model = ResNet26(ARCH, [4, 6], [3, 5, 2, 8] * 3).eval()
    randomise_batchnorm(model, seed=1)
    pixels = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    for domain in (0, 1):
        folded = fold_network(model, MEAN, STD, domain)
        assert not folded.training and not list(folded.parameters())
        with torch.inference_mode():
            expected = model(normalize_batch(pixels, MEAN, STD), domain)
            torch.testing.assert_close(folded(pixels), expected, atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched


def test_folded_network_refuses_other_inputs() -> None:
    folded = fold_network(ResNet26(ARCH, [3]).eval(), MEAN, STD)
    with pytest.raises(TypeError, match="expected a uint8 tensor"):
        folded(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected shape \[N, 3, H, W\]"):
        folded(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))


def test_channels_last_gather_equals_index_select() -> None:
    weight = torch.randn(8, 6, 3, 3).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([1, 4, 5])
    for dim in (0, 1):
        taken = _take(weight, dim, index)
        assert torch.equal(taken, weight.index_select(dim, index))
        assert taken.is_contiguous(memory_format=torch.channels_last)
    assert _take(weight, 0, None) is weight
