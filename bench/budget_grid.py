"""Budget x sharing-variant grid over seeds and two protocols, with each domain fine-tuned alone.

Protocols (``--protocol``):

* ``same-domain``: the backbone is pre-trained on the domains it is then pruned for
  (``--same-domain-domains``, the five embedded domains);
* ``held-out``: the backbone is pre-trained on source domains only (``--source-domains``) and the
  budget-aware training adapts it to target domains it never saw (``--target-domains``), as the
  paper adapts an ImageNet backbone to new domains.

Each protocol pre-trains one backbone (seed 0: fixed, like the paper's ImageNet backbone); every
``--seeds`` value is the seed of the budget-aware training (initial scores' order among equals,
batches, augmentation) and of each domain's fine-tuned-alone baseline. The data splits come from
``--split-seed`` (fixed), so a seed never moves test images into the backbone's training data.

For each protocol, seed, budget and sharing variant: budget-aware training from the protocol's
backbone, projection, pruning and export into ``--scratch``; per protocol and seed, each target
domain fine-tuned alone from the backbone (the S-score's baseline). With ``--nested``, per
protocol, seed and sharing variant also one nested run (``training.nested``) whose levels are
the ``--budgets``: its row records each level's budget and mean and per-domain test accuracy,
and the markdown compares each level with the runs trained at that budget alone (mean ± std
over seeds, the difference and whether it is within 1.5 points) and the nested artifact's
weight bytes with theirs summed (``reporting.nested``). Every finished run writes its
result JSON under ``--scratch`` at once: a grid that is interrupted (or run in pieces, e.g. one
seed at a time) continues with the runs not yet done when started again with the same settings.

Writes ``bench/results/budget_grid.{json,md}`` with the command and the machine's load average
at start and end. Rows carry accuracies, the artifact's manifest and the tensor shapes of its
weights (and of every backbone and baseline network); every ratio of the markdown is counted
from those shapes by ``reporting`` (``mdprune report bench/results/budget_grid.json`` draws the
same tables, mean ± std over seeds, and the plots, also on a clone without ``--scratch``).

    python bench/budget_grid.py --seeds 0 1 2 --protocol same-domain held-out
    python bench/budget_grid.py --seeds 0 1 2 --protocol held-out --sharing union --nested

Channels are pruned in groups of the CPU's SIMD width (``--channel-group auto``); at the default
width 0.5 and groups of 16 the least a domain can cost is 0.31 of the backbone's MACs, so the
tightest default budget is 0.35. A few steps (``--steps 4 --pretrain-steps 4
--reference-steps 4``, ``--width 0.125 --channel-group 4``) make a quick smoke run of the whole
path; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, command, write_results

from multidomain.arch import ArchSpec
from multidomain.artifact import MANIFEST_FILE, WEIGHTS_FILE
from multidomain.files import read_json, safetensors_shapes, write_json
from reporting.checks import check_runs
from reporting.inputs import collect_grid
from reporting.nested import nested_levels, nested_rows, nested_sizes
from reporting.render import (
    TABLE_LEGEND,
    reference_row,
    render_nested,
    render_seed_sections,
    render_table,
    run_row,
    setting_row,
)
from reporting.scores import score_runs
from reporting.seeds import findings, headline, settings_of
from training.budget import BudgetConfig, train_budget_aware
from training.budget_config import LEVEL_STATES
from training.data import DomainData, load_domains
from training.errors import TrainingError
from training.export import export_artifact
from training.nested import train_nested
from training.pretrain import BACKBONE_WEIGHTS, PretrainConfig, pretrain_backbone
from training.sharing import SHARING_VARIANTS

PROTOCOLS = ("same-domain", "held-out")
BACKBONE_SEED = 0
REFERENCE_LR = 0.01


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.35])
    parser.add_argument("--sharing", nargs="+", choices=SHARING_VARIANTS, default=["none", "union"])
    parser.add_argument(
        "--nested",
        action="store_true",
        help="Also train, per protocol, seed and sharing variant, one nested run whose levels "
        "are the --budgets (compared with the runs trained at each budget alone).",
    )
    parser.add_argument(
        "--level-state",
        choices=LEVEL_STATES,
        default=BudgetConfig().level_state,
        help="With --nested: each level trains its own BatchNorm affines and heads (private) or "
        "shares the largest level's (shared).",
    )
    parser.add_argument("--steps", type=int, default=BudgetConfig().steps)
    parser.add_argument(
        "--nested-steps",
        type=int,
        default=None,
        help="With --nested: the nested runs' training steps (default: --steps). Each nested "
        "step trains three levels; the runs trained alone keep --steps.",
    )
    parser.add_argument("--reference-steps", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig().steps)
    parser.add_argument("--width", type=float, default=ArchSpec().width_mult)
    parser.add_argument("--image-size", type=int, default=ArchSpec().image_size)
    parser.add_argument(
        "--channel-group",
        default="auto",
        help="Channels pruned together: auto (the CPU's SIMD width), 1, 4, 8 or 16.",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="Seed of the data splits.")
    parser.add_argument(
        "--same-domain-domains",
        nargs="+",
        default=[f"embedded:{n}" for n in ("mnist", "digits", "animals", "textures", "faces")],
    )
    parser.add_argument(
        "--source-domains",
        nargs="+",
        default=["embedded:mnist", "embedded:animals", "embedded:textures"],
    )
    parser.add_argument(
        "--target-domains",
        nargs="+",
        default=["embedded:digits", "embedded:faces", "embedded:letters"],
    )
    parser.add_argument("--scratch", type=Path, default=Path("runs/grid"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_grid")
    args = parser.parse_args(argv)
    if args.channel_group != "auto":
        try:
            args.channel_group = int(args.channel_group)
        except ValueError:
            parser.error(f"--channel-group must be auto or a number, got {args.channel_group!r}")
    for name in ("steps", "reference_steps", "pretrain_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for budget in args.budgets:
        if not 0 < budget <= 1:
            parser.error(f"every budget must be in (0, 1], got {budget}")
    if args.nested_steps is not None and args.nested_steps < 1:
        parser.error(f"--nested-steps must be >= 1, got {args.nested_steps}")
    if args.nested and len(set(args.budgets)) < 2:
        parser.error("--nested needs at least two different --budgets (its levels)")
    if args.nested and len(set(args.budgets)) != len(args.budgets):
        parser.error(f"--nested: a budget is given twice in --budgets {args.budgets}")
    return args


def run_settings(args: argparse.Namespace, arch: ArchSpec) -> dict[str, Any]:
    """What every run of the scratch folder must share to be reused (seeds, budgets and sharing
    variants may grow between pieces of one grid)."""
    return {
        "arch": arch.to_dict(),
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
        "reference_steps": args.reference_steps,
        "channel_group": args.channel_group,
        "split_seed": args.split_seed,
        "backbone_seed": BACKBONE_SEED,
    }


def protocol_domains(args: argparse.Namespace, protocol: str) -> tuple[list[str], list[str]]:
    """(source specs, target specs) of a protocol."""
    if protocol == "same-domain":
        return list(args.same_domain_domains), list(args.same_domain_domains)
    return list(args.source_domains), list(args.target_domains)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class GridError(Exception):
    """A scratch folder that holds runs of other settings, or an unreadable result."""


class Scratch:
    """One protocol's folder under ``--scratch``: its backbone, its artifacts, the baselines and
    a result JSON per finished run (the grid's resume points)."""

    def __init__(self, root: Path, protocol: str, settings: Mapping[str, Any]) -> None:
        self.root = root / protocol
        self.settings = dict(settings)
        self.backbone = self.root / "backbone"
        self.store = self.root / "store"
        self.results = self.root / "results"

    def done(self, key: str) -> dict[str, Any] | None:
        path = self.results / f"{key}.json"
        if not path.is_file():
            return None
        recorded = read_json(path, GridError)
        if recorded.get("settings") != self.settings:
            raise GridError(
                f"{path} was run with other settings ({recorded.get('settings')}); "
                "use another --scratch"
            )
        result: dict[str, Any] = recorded["result"]
        return result

    def finish(self, key: str, result: Mapping[str, Any]) -> dict[str, Any]:
        write_json(self.results / f"{key}.json", {"settings": self.settings, "result": result})
        return dict(result)


def budget_run(
    scratch: Scratch,
    protocol: str,
    seed: int,
    budget: float,
    sharing: str,
    domains: list[DomainData],
    args: argparse.Namespace,
) -> dict[str, Any]:
    config = run_config(args, seed, sharing, budget=budget)
    return trained_run(scratch, protocol, f"s{seed}-b{budget:g}-{sharing}", config, domains)


def run_config(args: argparse.Namespace, seed: int, sharing: str, **target: Any) -> BudgetConfig:
    """A grid run's training settings; ``target``: its ``budget`` or nested ``levels``."""
    return BudgetConfig(
        sharing=sharing,  # type: ignore[arg-type]
        steps=args.steps,
        channel_group=args.channel_group,
        seed=seed,
        **target,
    )


def nested_key(
    seed: int, levels: Sequence[float], sharing: str, level_state: str, steps: int | None = None
) -> str:
    """A nested run's key: its levels, level state and own steps (when not the grid's) are part
    of it, so that a grid of other budgets, level states or steps in the same scratch folder
    trains its own nested run."""
    key = f"s{seed}-nested-{'_'.join(f'{b:g}' for b in levels)}-{sharing}-{level_state}"
    return key if steps is None else f"{key}-{steps}steps"


def nested_run(
    scratch: Scratch,
    protocol: str,
    seed: int,
    sharing: str,
    domains: list[DomainData],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One run trained for every budget of ``--budgets`` at once (``training.nested``)."""
    own_steps = None if args.nested_steps in (None, args.steps) else args.nested_steps
    config = run_config(
        args, seed, sharing, levels=tuple(args.budgets), level_state=args.level_state
    )
    if own_steps is not None:
        config = replace(config, steps=own_steps)
    key = nested_key(seed, config.levels, sharing, config.level_state, own_steps)
    return trained_run(scratch, protocol, key, config, domains)


def trained_run(
    scratch: Scratch,
    protocol: str,
    key: str,
    config: BudgetConfig,
    domains: list[DomainData],
) -> dict[str, Any]:
    """Budget-aware training (nested when ``config.levels``) from the protocol's backbone,
    export and its grid row; reused when the scratch folder holds it already."""
    done = scratch.done(key)
    if done is not None:
        print(f"{protocol} {key}: done before, reused", flush=True)
        return done
    artifact = scratch.store / "grid" / key
    if not (artifact / MANIFEST_FILE).is_file():  # else: exported, its result not yet written
        train = train_nested if config.levels else train_budget_aware
        trained = train(domains, scratch.backbone, config)
        export_artifact(trained, scratch.store, "grid", key)
    manifest = read_json(artifact / MANIFEST_FILE)
    entries = manifest["domains"]
    row = {
        "protocol": protocol,
        "seed": config.seed,
        "budget": config.budget,
        "budget_metric": config.budget_metric,
        "sharing": config.sharing,
        "mean_test_accuracy": manifest["mean_test_accuracy"],
        "test_accuracy": {d["name"]: d["test_accuracy"] for d in entries},
        "learned_costs": {d["name"]: d["learned_costs"] for d in entries},
        "projected_channels": {d["name"]: d["projected_channels"] for d in entries},
        "max_compact_logit_diff": max(d["max_compact_logit_diff"] for d in entries),
        "wall_time_s": manifest["training"]["wall_time_s"],
        "artifact": str(artifact),
        "weights_shapes": safetensors_shapes(artifact / WEIGHTS_FILE),
        "manifest": manifest,
    }
    if config.levels:
        row["nested"] = True
        row["level_state"] = config.level_state
        row["levels"] = [
            {
                "budget": level["budget"],
                "mean_test_accuracy": level["mean_test_accuracy"],
                "test_accuracy": {d["name"]: d["levels"][j]["test_accuracy"] for d in entries},
            }
            for j, level in enumerate(manifest["levels"])
        ]
        levels = ", ".join(
            f"{level['budget']:g}: {level['mean_test_accuracy']:.4f}" for level in row["levels"]
        )
        print(f"{protocol} {key}: mean test accuracy per level {levels}", flush=True)
    else:
        print(f"{protocol} {key}: mean test accuracy {row['mean_test_accuracy']:.4f}", flush=True)
    return scratch.finish(key, row)


def reference_run(
    scratch: Scratch,
    protocol: str,
    seed: int,
    data: DomainData,
    arch: ArchSpec,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One domain fine-tuned alone (every weight) from the protocol's backbone."""
    key = f"alone-s{seed}-{data.name}"
    done = scratch.done(key)
    if done is not None:
        return done
    run = scratch.root / "alone" / f"s{seed}-{data.name}"
    config = PretrainConfig(steps=args.reference_steps, lr=REFERENCE_LR, seed=seed)
    record = pretrain_backbone([data], arch, config, run, init_from=scratch.backbone)
    row = {
        "protocol": protocol,
        "seed": seed,
        "domain": data.name,
        "test_accuracy": record["test_accuracy"][data.name],
        "test_images": data.counts()["test"],
        "wall_time_s": record["wall_time_s"],
        "run": str(run),
        "weights_shapes": safetensors_shapes(run / BACKBONE_WEIGHTS),
    }
    return scratch.finish(key, row)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    arch = ArchSpec(width_mult=args.width, image_size=args.image_size)
    settings = run_settings(args, arch)
    load_start = load_average()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    protocols: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    started = time.perf_counter()
    for protocol in args.protocol:
        sources, targets = protocol_domains(args, protocol)
        scratch = Scratch(args.scratch, protocol, settings)
        source_data = list(
            load_domains(sources, args.cache_dir, args.image_size, args.split_seed).values()
        )
        target_data = list(
            load_domains(targets, args.cache_dir, args.image_size, args.split_seed).values()
        )
        record = pretrain_backbone(
            source_data,
            arch,
            PretrainConfig(steps=args.pretrain_steps, seed=BACKBONE_SEED),
            scratch.backbone,
        )
        protocols[protocol] = {
            "sources": [d.name for d in source_data],
            "targets": [d.name for d in target_data],
            "backbone": {
                "run": str(scratch.backbone),
                "test_accuracy": record["test_accuracy"],
                "mean_test_accuracy": record["mean_test_accuracy"],
                "weights_shapes": safetensors_shapes(scratch.backbone / BACKBONE_WEIGHTS),
            },
        }
        for seed in args.seeds:
            for budget in args.budgets:
                for sharing in args.sharing:
                    rows.append(
                        budget_run(scratch, protocol, seed, budget, sharing, target_data, args)
                    )
            if args.nested:
                for sharing in args.sharing:
                    rows.append(nested_run(scratch, protocol, seed, sharing, target_data, args))
            for data in target_data:
                references.append(reference_run(scratch, protocol, seed, data, arch, args))
    result = {
        "command": command(),
        "created_at": stamp,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_average": {"start": load_start, "end": load_average()},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "settings": {
            **settings,
            "seeds": args.seeds,
            "budgets": args.budgets,
            "sharing": args.sharing,
            "nested": args.nested,
        },
        "protocols": protocols,
        "grid": rows,
        "reference_finetuned_alone": references,
    }
    write_results(args.out, result, render_markdown(result, args.out.with_suffix(".json")))


def render_markdown(result: dict[str, Any], results_json: Path) -> str:
    """Title, command, the settings over seeds with the rule's findings, and every run; every
    ratio counted from the recorded weights (``reporting``)."""
    runs, references = collect_grid(result, results_json)
    score_runs(runs, references)
    check_runs(runs)
    settings = settings_of(runs)
    domains = list(dict.fromkeys(d for r in runs for d in r.domains))
    reference_rows = [reference_row(r) for r in references]
    protocols = result.get("protocols", {})
    load = result.get("load_average", {})
    lines = [
        "# Budget x sharing grid (embedded benchmark, seeds and protocols)",
        "",
        f"Command: `{result['command']}` ({result['created_at']}, {result['machine']}; load "
        f"average {load.get('start')} at start, {load.get('end')} at end: the machine was "
        "shared)",
        "",
        *(
            f"- `{name}`: backbone pre-trained on {', '.join(p['sources'])}; budget-aware "
            f"training on {', '.join(p['targets'])}"
            for name, p in protocols.items()
        ),
        "",
        *render_seed_sections(
            [setting_row(s, domains) for s in settings],
            reference_rows,
            findings(settings),
            headline(settings),
        ),
        *(
            [*render_nested(nested_levels(nested_rows(runs)), nested_sizes(runs)), ""]
            if any(r.nested for r in runs)
            else []
        ),
        "## Every run",
        "",
        TABLE_LEGEND,
        "",
        *render_table([run_row(r) for r in runs], reference_rows),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except (GridError, TrainingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
