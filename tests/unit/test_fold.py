import pytest
import torch

from multidomain.arch import ArchSpec
from multidomain.fold import fold_batchnorm
from multidomain.network import ResNet26
from tests.artifacts import randomise_batchnorm


def test_folded_network_has_no_batchnorm_and_same_outputs() -> None:
    torch.manual_seed(0)
    model = ResNet26(ArchSpec(width_mult=0.125, image_size=16), [4], [3, 5, 2, 8] * 3).eval()
    randomise_batchnorm(model, seed=1)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy


def test_fold_refuses_a_multi_domain_network() -> None:
    with pytest.raises(ValueError, match="one-domain"):
        fold_batchnorm(ResNet26(ArchSpec(width_mult=0.125, image_size=16), [2, 3]))
