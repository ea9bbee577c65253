"""The command line for the paper's workload: ``predict-decathlon`` writes the challenge's
results file; ``--device``, ``--workers``, torchrun's environment and the global batch are
checked before any data is loaded (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from devtools.decathlon_layout import DecathlonLayout, write_decathlon_domain
from mdprune.cli import app
from multidomain.arch import ArchSpec
from tests.artifacts import write_tiny_artifact

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory: pytest.TempPathFactory) -> tuple[DecathlonLayout, DecathlonLayout]:
    root = tmp_path_factory.mktemp("decathlon")
    planes = write_decathlon_domain(root, "planes", 1, 3, {"train": 4, "val": 2}, 9, 20)
    flowers = write_decathlon_domain(root, "flowers", 2, 4, {"train": 4, "val": 2}, 5, 20)
    return planes, flowers


@pytest.fixture(scope="module")
def artifact(
    decathlon: tuple[DecathlonLayout, DecathlonLayout], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    labels = {
        layout.name: [f"{layout.name}-class{c + 1:03d}" for c in range(len(layout.category_ids))]
        for layout in decathlon
    }
    arch = ArchSpec(width_mult=0.125, image_size=16)
    return write_tiny_artifact(
        tmp_path_factory.mktemp("store"), "dec", "v1", arch, 0, labels_of=labels
    )


def test_predict_decathlon_writes_the_results_file(
    decathlon: tuple[DecathlonLayout, DecathlonLayout], artifact: Path, tmp_path: Path
) -> None:
    planes, flowers = decathlon
    out = tmp_path / "results.json"
    code, output = run(
        "predict-decathlon", str(artifact), "--root", str(planes.root), "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, output
    assert "14 predictions (planes 9, flowers 5)" in output
    results = json.loads(out.read_text())
    assert all(set(r) == {"image_id", "category_id"} for r in results)
    ids = [r["image_id"] for r in results]
    assert ids == sorted(planes.image_ids["test_stripped"]) + sorted(
        flowers.image_ids["test_stripped"]
    )
    for r in results:  # the original ids: k * 10^7 + c of the image's own domain
        layout = planes if r["image_id"] < 2 * 10**7 else flowers
        assert r["category_id"] in layout.category_ids
    # the same predictions as the served network on the same pixels
    from multidomain.artifact import load_artifact
    from training.data import images_to_tensor, load_decathlon_test

    served = load_artifact(artifact)
    test = load_decathlon_test(planes.root, "planes", 16, tmp_path / "cache")
    with torch.inference_mode():
        labels = served.served_network("planes")(images_to_tensor(test.images[:])).argmax(1)
    assert [r["category_id"] for r in results[:9]] == [planes.category_ids[i] for i in labels]


def test_predict_decathlon_one_domain(
    decathlon: tuple[DecathlonLayout, DecathlonLayout], artifact: Path, tmp_path: Path
) -> None:
    code, output = run(
        "predict-decathlon", str(artifact), "--root", str(decathlon[0].root),
        "--domain", "flowers", "--out", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0, output
    assert len(json.loads((tmp_path / "r.json").read_text())) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no-stripped-file", "annotation file not found"),
        ("other-labels", "labels are not the 4 categories"),
        ("unknown-domain", "unknown domain 'cars'"),
        ("zero-batch", "batch size must be >= 1"),
        ("out-is-dir", "is a directory"),
    ],
)
def test_predict_decathlon_bad_input(
    decathlon: tuple[DecathlonLayout, DecathlonLayout],
    artifact: Path,
    tmp_path: Path,
    change: str,
    message: str,
) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(decathlon[0].root, root)
    out, extra = tmp_path / "results.json", []
    if change == "no-stripped-file":
        (root / "annotations" / "flowers_test_stripped.json").unlink()
    elif change == "other-labels":
        path = root / "annotations" / "flowers_train.json"
        document = json.loads(path.read_text())
        document["categories"][0]["name"] = "tulip"
        path.write_text(json.dumps(document))
    elif change == "unknown-domain":
        extra = ["--domain", "cars"]
    elif change == "zero-batch":
        extra = ["--batch-size", "0"]
    else:
        out.mkdir()
    code, output = run(
        "predict-decathlon", str(artifact), "--root", str(root), "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), *extra,
    )  # fmt: skip
    assert code == 2, output
    assert output.startswith("error: ") and message in output
    assert len(output.strip().splitlines()) == 1
    assert not out.is_file()
    assert not (tmp_path / "cache").exists()  # refused before any image was decoded


def test_device_cuda_without_cuda_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["pretrain"], ["train"], ["pipeline", "--no-serve"]):
        code, output = run(*command, "--device", "cuda", "--cache-dir", str(tmp_path / "c"))
        assert code == 2, output
        assert output.startswith("error: --device cuda: no CUDA device is available")
        assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"RANK": "0"}, [], "distributed environment half set: RANK set but WORLD_SIZE"),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"},
            [],
            "LOCAL_RANK, MASTER_ADDR missing",
        ),
        (
            {
                "RANK": "0",
                "WORLD_SIZE": "3",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "x",
                "MASTER_PORT": "1",
            },
            ["--batch-size", "32"],
            "batch size 32 (per domain and step, over all ranks) is not divisible by the world "
            "size 3",
        ),
        ({}, ["--workers", "-1"], "workers must be >= 0"),
    ],
)
def test_distributed_settings_are_checked_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict, args: list[str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run_dir = tmp_path / "run"
    code, output = run(
        "pretrain", *args, "--cache-dir", str(tmp_path / "c"), "--run-dir", str(run_dir)
    )
    assert code == 2, output
    assert message in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists() and not run_dir.exists()


def test_serving_is_refused_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, output = run("pipeline", "--cache-dir", str(tmp_path / "c"))
    assert code == 2 and "--serve does not run under torchrun; add --no-serve" in output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no-train", "annotation file not found"),
        ("no-val", "annotation file not found"),
        ("stripped-as-train", "no annotations (is it a stripped test file?)"),
        ("stripped-file-as-root", "is an annotation file; give the Decathlon root folder"),
        ("stripped-name", "names a stripped test file"),
        ("missing-image", "1 of 12 listed images are missing"),
    ],
)
def test_decathlon_training_data_bad_input(
    decathlon: tuple[DecathlonLayout, DecathlonLayout], tmp_path: Path, change: str, message: str
) -> None:
    """Bad Decathlon data through the training command: one line, exit 2, no cache folder
    that looks complete, no backbone."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(decathlon[0].root, root)
    annotations = root / "annotations"
    name, location = "planes", root
    if change == "no-train":
        (annotations / "planes_train.json").unlink()
    elif change == "no-val":
        (annotations / "planes_val.json").unlink()
    elif change == "stripped-as-train":
        (annotations / "planes_train.json").write_bytes(
            (annotations / "planes_test_stripped.json").read_bytes()
        )
    elif change == "stripped-file-as-root":
        location = annotations / "planes_test_stripped.json"
    elif change == "stripped-name":
        name = "planes_test_stripped"
    else:
        document = json.loads((annotations / "planes_train.json").read_text())
        (root / document["images"][3]["file_name"]).unlink()
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    code, output = run(
        "pretrain", "--domains", f"decathlon:{name}={location}", "--cache-dir", str(cache),
        "--run-dir", str(run_dir), "--image-size", "16", "--device", "cpu", "--workers", "0",
        "--steps", "1",
    )  # fmt: skip
    assert code == 2, output
    assert output.startswith("error: ") and message in output, output
    assert len(output.strip().splitlines()) == 1
    assert not list(cache.rglob("cache.json")) and not list(cache.rglob("*.npy"))
    assert not (run_dir / "backbone.json").exists()
