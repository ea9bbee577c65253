import torch

from multidomain.arch import ArchSpec
from multidomain.artifact import split_state_dict
from multidomain.network import ChannelSwitches, ResNet26, domain_tensor_name, ste_binarize

ARCH = ArchSpec(width_mult=0.125, image_size=16)


def test_domain_index_selects_bn_and_head() -> None:
    torch.manual_seed(0)
    model = ResNet26(ARCH, [3, 5]).eval()
    x = torch.randn(2, 3, 16, 16)
    assert model(x, 0).shape == (2, 3)
    assert model(x, 1).shape == (2, 5)
    before = model(x, 0).clone()
    with torch.no_grad():
        model.stem.bn[1].weight.mul_(3.0)
        model.blocks[5].bn2[1].bias.add_(1.0)
    assert torch.equal(model(x, 0), before)  # domain 1's BN does not touch domain 0
    model.train()
    model(x, 1)
    assert model.stem.bn[0].num_batches_tracked == 0
    assert model.stem.bn[1].num_batches_tracked == 1


def test_shared_and_domain_parameters_partition() -> None:
    model = ResNet26(ARCH, [3, 5])
    shared = {id(p) for p in model.shared_parameters()}
    own = {id(p) for p in model.domain_parameters()}
    assert shared.isdisjoint(own)
    assert shared | own == {id(p) for p in model.parameters()}
    assert all(p.dim() == 4 for p in model.shared_parameters())


def test_ste_forward_is_hard_and_gradient_is_sigmoid() -> None:
    scores = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    mask = ste_binarize(scores)
    assert mask.tolist() == [0.0, 1.0, 1.0]
    mask.sum().backward()
    sig = torch.sigmoid(scores.detach())
    assert torch.allclose(scores.grad, sig * (1 - sig))


def test_switched_off_channel_is_removed_from_computation() -> None:
    torch.manual_seed(0)
    model = ResNet26(ARCH, [3]).eval()
    switches = ChannelSwitches(1, ARCH.full_mid_channels())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        switches.scores[4][0, 2] = -1.0
        reference = model(x, 0, switches.masks(0))
        model.blocks[4].conv1.weight[2].normal_()  # the switched-off filter no longer matters
        assert torch.allclose(model(x, 0, switches.masks(0)), reference)


def test_domain_tensor_names_tell_bn_sets_and_heads_from_shared_tensors() -> None:
    model = ResNet26(ARCH, [3, 5])
    names = list(model.state_dict())
    per_domain = {n: domain_tensor_name(n) for n in names}
    shared = [n for n, parsed in per_domain.items() if parsed is None]
    assert shared and all(".conv" in n for n in shared)
    assert domain_tensor_name("blocks.3.bn1.2.running_var") == ("blocks.3.bn1", 2, "running_var")
    assert domain_tensor_name("blocks.3.shortcut.bn.0.weight") == (
        "blocks.3.shortcut.bn",
        0,
        "weight",
    )
    head = domain_tensor_name("heads.1.bias")
    assert head is not None and head.is_head and head.for_domain(0) == "heads.0.bias"
    for name, parsed in per_domain.items():
        if parsed is not None:  # every per-domain tensor exists for every domain
            assert all(parsed.for_domain(k) in names for k in range(model.num_domains)), name
    shared_split, domains = split_state_dict(model.state_dict())
    assert sorted(shared_split) == sorted(shared)
    assert len(domains) == model.num_domains
