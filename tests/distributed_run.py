"""Backbone pre-training and budget-aware training of the training tests' two synthetic domains,
in one process or in every process torchrun starts, saving what each rank ends with:
``<out>/rank<r>.safetensors`` (model state, switch scores) and ``rank<r>.json`` (histories,
final masks, world size, test accuracy). Rank 0 writes the backbone to ``<out>/backbone``.

``--data uniform`` replaces every image of a domain by one flat colour and every label by the
first class: all samples of a batch are then the same, so a rank's share of a batch computes
exactly what the whole batch computes (BatchNorm statistics and their gradients included), and
N processes must reproduce one process up to the order of floating-point sums.

``--budgets 1.0 0.8 ...`` trains nested levels (``training.nested``) instead of one budget; the
rank files then also hold every level's state (``level<j>.<name>``: BN statistics, private
affines and heads) and masks.

    python -m tests.distributed_run OUT [--pretrain-steps P] [--steps S] [--batch-size B]
        [--data synthetic|uniform] [--budgets B1 B2 ...]
    torchrun --nproc_per_node=N -m tests.distributed_run OUT ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from tests.unit.training.synthetic import ARCH, synthetic_domain
from training.budget import BudgetConfig, train_budget_aware
from training.common import evaluate
from training.data import DomainData
from training.nested import train_nested
from training.pretrain import PretrainConfig, pretrain_backbone
from training.runtime import Runtime


def _domains(data: str) -> list[DomainData]:
    domains = [synthetic_domain("alpha", 3, 0), synthetic_domain("beta", 4, 1)]
    if data == "uniform":
        for k, domain in enumerate(domains):
            for split, images in domain.images.items():
                domain.images[split] = np.full_like(images, 40 + 90 * k)
                domain.targets[split] = np.zeros_like(domain.targets[split])
    return domains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pretrain-steps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", choices=["synthetic", "uniform"], default="synthetic")
    parser.add_argument("--budgets", type=float, nargs="+", default=())
    args = parser.parse_args()
    runtime = Runtime.from_environment("cpu")
    domains = _domains(args.data)
    pretrain = PretrainConfig(steps=args.pretrain_steps, batch_size=args.batch_size)
    config = BudgetConfig(
        budget=0.5,
        steps=args.steps,
        batch_size=args.batch_size,
        finetune_steps=2,
        seed=3,
        channel_group=4,  # width 0.125: mid widths 8/16/32
        levels=tuple(args.budgets),
    )
    train = train_nested if config.levels else train_budget_aware
    with runtime.session():
        backbone = pretrain_backbone(domains, ARCH, pretrain, args.out / "backbone", None, runtime)
        trained = train(domains, args.out / "backbone", config, runtime)
        accuracy = evaluate(trained.model, domains, "test", trained.domain_masks, runtime=runtime)
    tensors = {f"model.{k}": v for k, v in trained.model.state_dict().items()}
    tensors.update({f"scores.{b}": s.detach() for b, s in enumerate(trained.switches.scores)})
    for j, level in enumerate(trained.levels):
        tensors.update({f"level{j}.{name}": value for name, value in level.state.items()})
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(args.out / f"rank{runtime.rank}.safetensors"),
    )
    record = {
        "world_size": runtime.world_size,
        "backbone_test_accuracy": backbone["test_accuracy"],
        "history": trained.history,
        "masks": [m.int().tolist() for m in trained.masks],
        "projected_channels": trained.projected_channels,
        "test_accuracy": accuracy,
        "levels": [
            {
                "budget": level.budget,
                "masks": [m.int().tolist() for m in level.masks],
                "shared_bn_test": level.shared_bn_test,
            }
            for level in trained.levels
        ],
    }
    (args.out / f"rank{runtime.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
