"""The Visual Decathlon S-score and the efficiency figures (docs/method.md, "Scores").

Per domain ``d`` with test error ``E_d`` and the baseline's error ``B_d`` (the domain fine-tuned
alone from the same backbone, in the same grid run and seed):

    E_max = 2 * B_d,   alpha = 1000 / E_max**2,   S_d = alpha * max(0, E_max - E_d)**2

and ``S = sum_d S_d`` (each domain at most 1000: an error-free model; 250 at the baseline's
error; 0 at twice it or worse). A baseline error of 0 is taken as one test image's error,
``1 / n_test``: 0 errors on ``n`` images bounds the error below ``1/n``, it does not make it
0 (with ``E_max = 0`` alpha is undefined). Efficiency: ``S`` per backbone's worth of
parameters (``S / compact params fraction``) and per backbone's worth of MACs (``S / mean over
domains of the domain MACs fraction``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidomain.stats import mean
from reporting.inputs import Reference, Run

__all__ = ["GAMMA", "baseline_error", "decathlon_score", "efficiency", "score_runs"]

GAMMA = 2.0
DOMAIN_MAX = 1000.0


def baseline_error(accuracy: float, test_images: int | None) -> float | None:
    """The baseline's error, at least one test image's (``None``: 0 and the split size unknown)."""
    error = 1.0 - accuracy
    if error > 0:
        return error
    return 1.0 / test_images if test_images else None


def decathlon_score(
    accuracy: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    test_images: Mapping[str, int],
) -> float | None:
    """``S`` summed over ``accuracy``'s domains; ``None`` if one lacks its value or baseline."""
    total = 0.0
    for name, value in accuracy.items():
        base = baseline.get(name)
        if value is None or base is None:
            return None
        reference = baseline_error(base, test_images.get(name))
        if reference is None:
            return None
        e_max = 2.0 * reference
        alpha = DOMAIN_MAX / e_max**GAMMA
        total += alpha * max(0.0, e_max - (1.0 - value)) ** GAMMA
    return total


def efficiency(score: float | None, fraction: float | None) -> float | None:
    """``score`` per backbone's worth of a cost (``fraction`` of the backbone's)."""
    if score is None or fraction is None or fraction <= 0:
        return None
    return score / fraction


def score_runs(runs: Iterable[Run], references: Iterable[Reference]) -> None:
    """Fill in every run's S-score and efficiency against the fine-tuned-alone baseline of its
    protocol and seed (runs without one keep ``None``)."""
    baselines = {(r.protocol, r.seed): r for r in references if r.kind == "alone"}
    for run in runs:
        base = baselines.get((run.protocol, run.seed))
        if base is None or not base.test_accuracy:
            continue
        run.s_score = decathlon_score(run.test_accuracy, base.test_accuracy, base.test_images)
        run.s_per_params = efficiency(run.s_score, run.compact_params_fraction)
        run.s_per_macs = efficiency(run.s_score, mean(run.macs_fraction.values()))
