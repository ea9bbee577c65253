"""Training-time augmentation. Eval resizing lives in ``multidomain.preprocess``: serving
needs it too."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_randoms", "augment_with", "train_augment"]


def train_augment(
    images: torch.Tensor, allow_flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample RandomResizedCrop(scale=(0.7, 1), ratio=(3/4, 4/3)) and optional h-flip.

    Vectorised with one affine grid per sample; output has the input's shape and dtype
    (uint8 is rounded back). Random numbers come from ``generator`` (a CPU generator).
    """
    if images.ndim != 4:
        raise ValueError(f"expected [B, C, H, W], got {list(images.shape)}")
    return augment_with(images, augment_randoms(images.shape[0], generator), allow_flip)


def augment_randoms(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The uniform random numbers ``train_augment`` uses for ``count`` images: ``[count, 5]``."""
    return torch.rand(count, 5, generator=generator, dtype=torch.float32)


def augment_with(images: torch.Tensor, u: torch.Tensor, allow_flip: bool) -> torch.Tensor:
    """``train_augment`` with its random numbers given (row ``i`` for image ``i``), on the
    images' device."""
    if images.ndim != 4 or u.shape != (images.shape[0], 5):
        raise ValueError(
            f"expected [B, C, H, W] and [B, 5], got {list(images.shape)}, {list(u.shape)}"
        )
    b = images.shape[0]
    if b == 0:
        return images.clone()
    area = 0.7 + 0.3 * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # crop centre in [-1, 1] coordinates
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if allow_flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    x = images.float() if not images.is_floating_point() else images
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)
