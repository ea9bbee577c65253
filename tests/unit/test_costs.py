from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.artifact import WEIGHTS_FILE, load_artifact
from multidomain.costs import (
    WeightCountError,
    backbone_totals,
    compact_totals,
    count_artifact,
    count_backbone,
    layer_costs,
    linear_cost,
    subnet_totals,
    totals,
)
from multidomain.files import safetensors_shapes
from multidomain.network import ResNet26
from tests.artifacts import write_tiny_artifact


def measured_flops(model: torch.nn.Module, image_size: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


@pytest.mark.parametrize(
    ("arch", "mids"),
    [
        (ArchSpec(width_mult=0.25, image_size=32), None),
        (ArchSpec(width_mult=0.25, image_size=32), [1, 3, 5, 7, 2, 9, 11, 4, 30, 1, 64, 17]),
        (ArchSpec(width_mult=0.5, image_size=28), [5] * 12),
    ],
)
def test_counted_macs_match_flop_counter(arch: ArchSpec, mids: list[int] | None) -> None:
    model = ResNet26(arch, [7], mids).eval()
    counted = totals(layer_costs(arch, mids, (7,)))
    assert measured_flops(model, arch.image_size) == 2 * counted.macs
    bn = sum(
        m.weight.numel() + m.bias.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert counted.params == sum(p.numel() for p in model.parameters())
    assert bn > 0


def test_resnet26_layout() -> None:
    arch = ArchSpec(width_mult=1.0, image_size=72)
    assert arch.widths == (64, 128, 256)
    blocks = arch.blocks()
    assert len(blocks) == 12
    assert [b.stride for b in blocks] == [2, 1, 1, 1] * 3
    convs = [m for m in ResNet26(arch, [10]).modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem + 24 block convs (+ 3 projection shortcuts) + 1 head = ResNet-26
    assert len(convs) == 1 + 24 + 3
    assert arch.spatial_sizes()[-1] == 9


def test_linear_cost_is_exact() -> None:
    arch = ArchSpec()
    mids = [3, 16, 1, 8, 20, 32, 5, 7, 64, 1, 33, 40]
    for metric in ("params", "macs"):
        lin = linear_cost(arch, metric)
        expected = subnet_totals(arch, mids).get(metric) / backbone_totals(arch).get(metric)
        assert lin.fraction(mids) == pytest.approx(expected, rel=1e-12)
        assert lin.fraction(arch.full_mid_channels()) == pytest.approx(1.0)


def test_compact_totals_counts_every_domain_once() -> None:
    arch = ArchSpec()
    full = arch.full_mid_channels()
    one = compact_totals(arch, full, [full], [10])
    assert one.params == subnet_totals(arch, full, 10).params
    two = compact_totals(arch, full, [full, full], [10, 2])
    bn_and_head = subnet_totals(arch, full, 2).params - sum(
        c.params for c in layer_costs(arch, full) if c.kind == "conv"
    )
    assert two.params == one.params + bn_and_head


@pytest.mark.parametrize("width", [0.0, -1.0])
def test_bad_width_multiplier(width: float) -> None:
    with pytest.raises(ArchitectureError, match="width multiplier must be > 0"):
        ArchSpec(width_mult=width)


def test_an_artifact_is_counted_from_its_tensor_shapes(tmp_path: Path) -> None:
    path = write_tiny_artifact(tmp_path / "store", group=4)
    artifact = load_artifact(path)
    shapes = safetensors_shapes(path / WEIGHTS_FILE)
    counted = count_artifact(artifact.arch, shapes, [d.name for d in artifact.domains])
    mids = [d.mid_channels for d in artifact.domains]
    classes = [d.num_classes for d in artifact.domains]
    union = [artifact.shared[f"{b.name}.conv1.weight"].shape[0] for b in artifact.arch.blocks()]
    assert counted.compact_params == compact_totals(artifact.arch, union, mids, classes).params
    assert counted.compact_params == sum(t.numel() for n, t in artifact.shared.items()) + sum(
        t.numel()
        for d in artifact.domain_tensors
        for n, t in d.items()
        if n.endswith(("weight", "bias"))
    )
    for entry, domain in zip(artifact.domains, counted.domains, strict=True):
        assert domain.mid_channels == entry.mid_channels
        assert domain.num_classes == entry.num_classes
        served = subnet_totals(artifact.arch, entry.mid_channels, entry.num_classes)
        # the compact subnetwork's own parameter count, from torch, is the same
        subnet = artifact.subnet(entry.name)
        weights = sum(p.numel() for p in subnet.parameters())
        assert domain.params + domain.head_params == served.params == weights
        assert domain.macs + domain.head_macs == served.macs
        assert (domain.params, domain.macs) == (
            subnet_totals(artifact.arch, entry.mid_channels).params,
            subnet_totals(artifact.arch, entry.mid_channels).macs,
        )


def test_a_backbone_is_counted_from_its_tensor_shapes() -> None:
    arch = ArchSpec(width_mult=0.125, image_size=16)
    model = ResNet26(arch, [3, 10])
    shapes = {n: list(t.shape) for n, t in model.state_dict().items()}
    counted = count_backbone(arch, shapes)
    assert counted.totals == backbone_totals(arch)
    assert counted.num_domains == 2
    assert counted.all_domains_params == sum(p.numel() for p in model.parameters())
    assert counted.all_domains_params > counted.totals.params


def test_shapes_of_another_architecture_are_refused() -> None:
    arch = ArchSpec(width_mult=0.125, image_size=16)
    shapes = {n: list(t.shape) for n, t in ResNet26(arch, [3]).state_dict().items()}
    wider = ArchSpec(width_mult=0.25, image_size=16)
    with pytest.raises(WeightCountError, match="count"):
        count_backbone(wider, shapes)
    shapes["extra.conv.weight"] = [1, 1, 1, 1]
    with pytest.raises(WeightCountError, match=r"extra\.conv\.weight"):
        count_backbone(arch, shapes)
