"""The served form of one domain's network: BatchNorm folded into the convolutions, the input
normalisation folded into the stem, channels-last weights, and a flat forward pass with ReLU and
the residual addition applied in place.

* Folding: a BatchNorm with scale ``s = gamma / sqrt(var + eps)`` and shift ``b = beta - mean * s``
  becomes ``w' = w * s`` (per output channel) and the bias ``b``
  (:func:`batchnorm_scale_shift`). The normalisation ``(x / 255 - mean) / std`` becomes an input
  shift ``x - 255 * mean`` and a per-input-channel factor ``1 / (255 * std)`` of the stem weights:
  zero padding of the shifted input equals zero padding of the normalised one, so this is exact.
* The forward pass (:class:`FoldedNetwork`) is flat: per block ``conv2d`` + ``relu_`` and
  ``conv2d`` + ``add_`` + ``relu_`` on channels-last tensors, no module calls. oneDNN's fused
  convolution kernels (``mkldnn._convolution_pointwise``, which inductor uses) were measured
  against it on this project's networks and were never faster, and at batch 1 about 1.6x
  slower (``docs/method.md``, "The served form").
* A :class:`DomainFold` is everything a domain adds to the shared convolutions (its BN as
  scale/shift, its mid channels, its head, its input normalisation); :func:`fold_weights` makes
  a :class:`FoldedNetwork` from the shared weights and a fold. ``multidomain.compact`` keeps one
  set of shared weights for every domain and folds per batch or caches; :func:`fold_network`
  folds a one-domain ``ResNet26`` (the unpruned backbone in benchmarks, a test's reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multidomain.arch import ArchSpec
from multidomain.network import ResNet26, split_state_dict

__all__ = [
    "BN_EPS",
    "DomainFold",
    "FoldedBlock",
    "FoldedConv",
    "FoldedNetwork",
    "batchnorm_scale_shift",
    "channels_last_weights",
    "conv_names",
    "fold_network",
    "fold_weights",
    "mid_path",
]

#: ``nn.BatchNorm2d``'s default epsilon, which every BatchNorm of ``ResNet26`` uses.
BN_EPS = 1e-5

_CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with its BatchNorm folded in: channels-last weight, bias, geometry."""

    weight: Tensor
    bias: Tensor
    stride: int
    padding: int


@dataclass(frozen=True)
class FoldedBlock:
    conv1: FoldedConv
    conv2: FoldedConv
    shortcut: FoldedConv | None


def _conv(x: Tensor, conv: FoldedConv, relu: bool) -> Tensor:
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    return out.relu_() if relu else out


def mid_path(x: Tensor, identity: Tensor, conv1: FoldedConv, conv2: FoldedConv) -> Tensor:
    """What a block's mid channels cost: ``relu(conv2(relu(conv1(x))) + identity)``; the part
    of the forward pass that pruning shrinks (``multidomain.latency`` times it)."""
    hidden = _conv(x, conv1, relu=True)
    return F.conv2d(hidden, conv2.weight, conv2.bias, 1, 1).add_(identity).relu_()


class FoldedNetwork(nn.Module):
    """One domain's served network, eval mode: uint8 pixels [N, 3, S, S] in, logits out. Holds
    its tensors as plain attributes (no parameters: nothing here trains)."""

    def __init__(
        self,
        input_shift: Tensor,
        stem: FoldedConv,
        blocks: Sequence[FoldedBlock],
        head_weight: Tensor,
        head_bias: Tensor,
    ) -> None:
        super().__init__()
        self.input_shift = input_shift.view(1, -1, 1, 1)
        self.stem = stem
        self.folded_blocks = list(blocks)
        self.head_weight = head_weight
        self.head_bias = head_bias
        self.eval()

    def tensors(self) -> list[Tensor]:
        """Every tensor the network holds (for counting resident bytes)."""
        out = [self.input_shift, self.stem.weight, self.stem.bias, self.head_weight, self.head_bias]
        for block in self.folded_blocks:
            for conv in (block.conv1, block.conv2, block.shortcut):
                if conv is not None:
                    out += [conv.weight, conv.bias]
        return out

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 tensor, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != self.input_shift.shape[1]:
            raise ValueError(f"expected shape [N, 3, H, W], got {list(images.shape)}")
        x = torch.empty(images.shape, memory_format=_CHANNELS_LAST)
        torch.sub(images, self.input_shift, out=x)
        x = _conv(x, self.stem, relu=True)
        for block in self.folded_blocks:
            identity = x if block.shortcut is None else _conv(x, block.shortcut, relu=False)
            x = mid_path(x, identity, block.conv1, block.conv2)
        return F.linear(x.mean(dim=(2, 3)), self.head_weight, self.head_bias)


def batchnorm_scale_shift(
    weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor
) -> tuple[Tensor, Tensor]:
    """The BatchNorm as ``y = x * scale + shift`` (eval mode)."""
    scale = weight / torch.sqrt(running_var + BN_EPS)
    return scale, bias - running_mean * scale


def conv_names(arch: ArchSpec) -> list[tuple[str, str]]:
    """``(convolution, its BatchNorm)`` state-dict prefixes of every convolution, in order."""
    names = [("stem.conv", "stem.bn")]
    for block in arch.blocks():
        names += [(f"{block.name}.conv1", f"{block.name}.bn1")]
        names += [(f"{block.name}.conv2", f"{block.name}.bn2")]
        if block.has_projection:
            names.append((f"{block.name}.shortcut.conv", f"{block.name}.shortcut.bn"))
    return names


@dataclass(frozen=True)
class DomainFold:
    """What a domain adds to the shared convolutions: per convolution its BN's ``scale``
    (the stem's also holds the input normalisation: shape [out, in, 1, 1]) and ``shift``; per
    block the indices of its mid channels among the shared ones (``None``: all of them, in
    order); its head; the input shift ``255 * mean``."""

    scale: Mapping[str, Tensor]
    shift: Mapping[str, Tensor]
    channels: Sequence[Tensor | None]
    head_weight: Tensor
    head_bias: Tensor
    input_shift: Tensor

    @classmethod
    def from_tensors(
        cls,
        arch: ArchSpec,
        tensors: Mapping[str, Tensor],
        channels: Sequence[Sequence[int] | None],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> DomainFold:
        """From a domain's BN and head tensors named as in the artifact (``stem.bn.weight``,
        ``head.weight``, ...; BN without the set index)."""
        scale: dict[str, Tensor] = {}
        shift: dict[str, Tensor] = {}
        for conv, bn in conv_names(arch):
            scale[conv], shift[conv] = batchnorm_scale_shift(
                *(tensors[f"{bn}.{leaf}"].float() for leaf in _BN_LEAVES)
            )
        pixel_scale = 1.0 / (255.0 * torch.tensor([float(s) for s in std]))
        scale["stem.conv"] = scale["stem.conv"].view(-1, 1, 1, 1) * pixel_scale.view(1, -1, 1, 1)
        indices = [
            None if c is None else torch.as_tensor(list(c), dtype=torch.long) for c in channels
        ]
        return cls(
            scale,
            shift,
            indices,
            tensors["head.weight"].float().contiguous(),
            tensors["head.bias"].float().contiguous(),
            255.0 * torch.tensor([float(m) for m in mean]),
        )

    def tensors(self) -> list[Tensor]:
        out = [*self.scale.values(), *self.shift.values(), self.head_weight, self.head_bias]
        return out + [self.input_shift] + [c for c in self.channels if c is not None]


_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def _take(weight: Tensor, dim: int, index: Tensor | None) -> Tensor:
    """``weight.index_select(dim, index)`` of a channels-last weight, channels-last again (the
    gather runs on the physical [out, kh, kw, in] layout, so no reorder follows)."""
    if index is None:
        return weight
    physical = weight.permute(0, 2, 3, 1)
    axis = 0 if dim == 0 else 3
    return physical.index_select(axis, index).permute(0, 3, 1, 2)


def fold_weights(arch: ArchSpec, shared: Mapping[str, Tensor], fold: DomainFold) -> FoldedNetwork:
    """A domain's served network: its channels taken from the ``shared`` channels-last
    convolution weights (``<conv>.weight``), its BatchNorm folded in. Makes new weight tensors
    (the shared ones are not modified)."""

    def folded(name: str, stride: int, padding: int, block: int | None = None) -> FoldedConv:
        weight = shared[f"{name}.weight"]
        if block is not None and name.endswith("conv1"):
            weight = _take(weight, 0, fold.channels[block])
        elif block is not None and name.endswith("conv2"):
            weight = _take(weight, 1, fold.channels[block])
        scale = fold.scale[name]
        weight = weight * (scale if scale.ndim == 4 else scale.view(-1, 1, 1, 1))
        return FoldedConv(weight, fold.shift[name], stride, padding)

    blocks = []
    for b, spec in enumerate(arch.blocks()):
        blocks.append(
            FoldedBlock(
                folded(f"{spec.name}.conv1", spec.stride, 1, b),
                folded(f"{spec.name}.conv2", 1, 1, b),
                folded(f"{spec.name}.shortcut.conv", spec.stride, 0)
                if spec.has_projection
                else None,
            )
        )
    return FoldedNetwork(
        fold.input_shift, folded("stem.conv", 1, 1), blocks, fold.head_weight, fold.head_bias
    )


def channels_last_weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The convolution weights of a state dict as float32 channels-last tensors."""
    return {
        name: tensor.float().contiguous(memory_format=_CHANNELS_LAST)
        for name, tensor in state.items()
        if tensor.ndim == 4
    }


@torch.no_grad()
def fold_network(
    model: ResNet26, mean: Sequence[float], std: Sequence[float], domain: int = 0
) -> FoldedNetwork:
    """The served network of one domain of a ``ResNet26`` (all its mid channels)."""
    shared, per_domain = split_state_dict(model.state_dict())
    fold = DomainFold.from_tensors(
        model.arch, per_domain[domain], [None] * len(model.mid_channels), mean, std
    )
    return fold_weights(model.arch, channels_last_weights(shared), fold)
