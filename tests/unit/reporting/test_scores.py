"""The S-score, the efficiency figures, the spread rule over seeds, and that no ratio is a
literal in the grid script or the report code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from reporting.inputs import Run
from reporting.scores import baseline_error, decathlon_score, efficiency
from reporting.seeds import compare, findings, headline, settings_of, spread

ROOT = Path(__file__).resolve().parents[3]


def test_s_score_follows_the_decathlon_formula() -> None:
    baseline = {"a": 0.9, "b": 0.8}  # errors 0.1 and 0.2: E_max 0.2 and 0.4
    images = {"a": 100, "b": 100}
    assert decathlon_score(baseline, baseline, images) == pytest.approx(500.0)  # 250 each
    assert decathlon_score({"a": 1.0, "b": 1.0}, baseline, images) == pytest.approx(2000.0)
    assert decathlon_score({"a": 0.8, "b": 0.6}, baseline, images) == pytest.approx(0.0)
    assert decathlon_score({"a": 0.5, "b": 0.0}, baseline, images) == 0.0  # worse: 0, not < 0
    # a: E 0.05 -> 1000 / 0.2^2 * 0.15^2 = 562.5; b: E 0.3 -> 1000 / 0.4^2 * 0.1^2 = 62.5
    assert decathlon_score({"a": 0.95, "b": 0.7}, baseline, images) == pytest.approx(625.0)
    assert decathlon_score({"a": None, "b": 0.7}, baseline, images) is None
    assert decathlon_score({"c": 0.7}, baseline, images) is None


def test_a_perfect_baseline_counts_as_one_test_image_wrong() -> None:
    assert baseline_error(1.0, 30) == pytest.approx(1 / 30)
    assert baseline_error(1.0, None) is None
    assert baseline_error(0.75, None) == pytest.approx(0.25)
    # the baseline itself scores 250 at its floor error; one image wrong (E = 1/30) too
    score = decathlon_score({"faces": 1 - 1 / 30}, {"faces": 1.0}, {"faces": 30})
    assert score == pytest.approx(250.0)
    assert decathlon_score({"faces": 1.0}, {"faces": 1.0}, {"faces": 30}) == pytest.approx(1000)


def test_efficiency_is_the_score_per_backbone_of_cost() -> None:
    assert efficiency(600.0, 0.5) == pytest.approx(1200.0)
    assert efficiency(None, 0.5) is None and efficiency(600.0, None) is None
    assert efficiency(600.0, 0.0) is None


def run(seed: int, budget: float, sharing: str, accuracy: float, params: float) -> Run:
    return Run(
        source="test",
        model_name="grid",
        version=f"s{seed}-b{budget}-{sharing}",
        budget=budget,
        budget_metric="both",
        sharing=sharing,
        sharing_weight=5.0,
        learnable_weight=False,
        domains=["a"],
        test_accuracy={"a": accuracy},
        mean_test_accuracy=accuracy,
        compact_params_fraction=params,
        params_fraction={"a": params / 2},
        macs_fraction={"a": budget - 0.01},
        wall_time_s=1.0,
        protocol="held-out",
        seed=seed,
    )


def test_a_difference_is_real_only_beyond_the_spread() -> None:
    a, b = spread([0.90, 0.92, 0.94]), spread([0.80, 0.81, 0.82])
    assert a is not None and b is not None
    assert a.mean == pytest.approx(0.92) and a.std == pytest.approx(0.02) and a.n == 3
    assert compare(a, b)[0]  # 0.11 apart, spreads 0.02 + 0.01
    close = spread([0.89, 0.91, 0.93])
    assert close is not None
    real, why = compare(a, close)
    assert not real and "within the spread" in why
    one, other = spread([0.9]), spread([0.5])
    assert one is not None and other is not None and one.std is None
    assert not compare(one, other)[0]  # one seed: no spread, nothing called real


def test_findings_and_headline_apply_the_rule_over_seeds() -> None:
    runs = [
        *(run(s, 1.0, "union", a, 1.02) for s, a in enumerate((0.95, 0.96, 0.97))),
        *(
            run(s, 0.5, "none", a, p)
            for s, a, p in zip(range(3), (0.93, 0.94, 0.95), (0.70, 0.72, 0.74), strict=True)
        ),
        *(
            run(s, 0.5, "union", a, p)
            for s, a, p in zip(range(3), (0.935, 0.945, 0.955), (0.50, 0.51, 0.52), strict=True)
        ),
    ]
    settings = settings_of(runs)
    assert [(s.budget, s.sharing, s.seeds) for s in settings] == [
        (1.0, "union", [0, 1, 2]),
        (0.5, "none", [0, 1, 2]),
        (0.5, "union", [0, 1, 2]),
    ]
    lines = findings(settings)
    accuracy = next(x for x in lines if "union vs none: mean accuracy" in x)
    assert "within the spread" in accuracy  # 0.005 apart, spreads 0.01 + 0.01
    params = next(x for x in lines if "union vs none: compact/backbone params" in x)
    assert params.endswith(": real")  # 0.21 apart, spreads 0.02 + 0.01
    assert any("union vs budget 1: mean accuracy" in x for x in lines)
    (claim,) = headline(settings)
    assert "(3 seeds)" in claim and claim.endswith(": holds")  # drop 0.015, params 0.51
    worse = [*runs[:3], *(run(s, 0.5, "union", 0.9, 0.5) for s in range(3))]
    (claim,) = headline(settings_of(worse))
    assert claim.endswith("does NOT hold")  # drop 0.06


#: Code whose tables and rows must hold counted figures only
FIGURE_CODE = [
    ROOT / "bench" / "budget_grid.py",
    *sorted((ROOT / "reporting").glob("*.py")),
]
LITERAL_FIGURE = re.compile(r"~\s*\d|(?<![\w.])\d+\.\d+")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(id(value))
    return found


@pytest.mark.parametrize("path", FIGURE_CODE, ids=lambda p: p.name)
def test_no_figure_is_written_in_as_a_literal(path: Path) -> None:
    """No string the grid or the report prints holds a decimal figure (``1.000``, ``~5``): every
    ratio must come from a count. Docstrings may quote measured figures."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and LITERAL_FIGURE.search(node.value)
    ]
    assert not literals, f"{path.name}: literal figures {literals}"


def test_the_literal_check_catches_a_written_in_ratio() -> None:
    code = 'row = "| backbone | 1.000 | 1.000 |"\nalone = f"~5 backbones {x}"\n'
    tree = ast.parse(code)
    found = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and LITERAL_FIGURE.search(n.value)
    ]
    assert found == ["| backbone | 1.000 | 1.000 |", "~5 backbones "]
