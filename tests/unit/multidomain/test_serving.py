"""The serving core both servers share: building the served domains from an artifact, the three
steps of a request (decode, predict, encode), settings and the error body."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from multidomain.artifact import Artifact, load_artifact
from multidomain.preprocess import ImageDecodeError, ImageTooLargeError, eval_resize
from multidomain.serving import (
    ALL_DOMAINS,
    DEFAULTS,
    MAX_BODY_BYTES,
    ServedArtifact,
    ServingSettings,
    UnknownDomainError,
    class_probabilities,
    env_name,
    error_body,
)
from service.settings import ServiceSettings
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact
from tests.unit.torchserving.test_handler import png
from torchserving.export import TorchServeModelConfig
from torchserving.handler import HandlerConfig


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return load_artifact(write_tiny_artifact(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def served(artifact: Artifact) -> ServedArtifact:
    return ServedArtifact.build(artifact)


def test_build_serves_every_domain_as_the_artifact_defines_it(
    artifact: Artifact, served: ServedArtifact
) -> None:
    assert (served.path, served.name, served.version) == (artifact.path, "tiny", "v1")
    assert (served.path / "manifest.json").is_file()
    assert served.manifest == artifact.manifest
    assert list(served.domains) == list(TINY_DOMAINS)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for name, domain in served.domains.items():
        assert domain.name == name and domain.entry == artifact.domain(name)
        assert domain.input_shape == (3, 16, 16) and domain.input_dtype == torch.uint8
        assert not domain.network.training
        with torch.inference_mode():
            expected = artifact.served_network(name)(images)
            torch.testing.assert_close(domain.network(images), expected)


def test_subclasses_build_themselves(artifact: Artifact) -> None:
    class Extended(ServedArtifact):
        pass

    assert type(Extended.build(artifact)) is Extended


def test_preprocess_decodes_to_the_domain_input(served: ServedArtifact) -> None:
    domain = served.domain("digits")
    data = png(1, (20, 24))
    tensor = domain.preprocess(data, max_pixels=10_000)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == domain.input_shape
    with Image.open(io.BytesIO(data)) as image:
        torch.testing.assert_close(tensor, eval_resize(16)(image))
    with pytest.raises(ImageDecodeError):
        domain.preprocess(b"not an image", max_pixels=10_000)
    with pytest.raises(ImageTooLargeError):
        domain.preprocess(data, max_pixels=20 * 24 - 1)


def test_class_probabilities_is_the_softmax_of_one_forward_pass(served: ServedArtifact) -> None:
    domain = served.domain("shapes")
    images = torch.randint(0, 256, (5, *domain.input_shape), dtype=torch.uint8)
    probabilities = class_probabilities(domain.network, images)
    assert probabilities.shape == (5, len(TINY_DOMAINS["shapes"]))
    assert not probabilities.requires_grad
    with torch.no_grad():
        expected = torch.softmax(domain.network(images), dim=1)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))


def test_top_k_ranks_classes_most_probable_first(served: ServedArtifact) -> None:
    domain = served.domain("shapes")  # circle, square, triangle
    probabilities = torch.tensor([0.2, 0.5, 0.3])
    assert domain.top_k(probabilities, 2) == [
        {"label": "square", "index": 1, "probability": pytest.approx(0.5)},
        {"label": "triangle", "index": 2, "probability": pytest.approx(0.3)},
    ]
    everything = domain.top_k(probabilities, 10)
    assert [c["label"] for c in everything] == ["square", "triangle", "circle"]


def test_answer_is_the_predict_response_body(served: ServedArtifact) -> None:
    domain = served.domain("colours")
    answer = served.answer(domain, torch.tensor([0.9, 0.1]), 1)
    assert answer == {
        "model": "tiny",
        "version": "v1",
        "domain": "colours",
        "budget": 0.4,  # the domain's own budget: its one level
        "predictions": [{"label": "red", "index": 0, "probability": pytest.approx(0.9)}],
    }


def test_unknown_domain_names_the_known_ones(served: ServedArtifact) -> None:
    with pytest.raises(UnknownDomainError, match=r"'nope'; known domains: colours, digits, shapes"):
        served.domain("nope")


def test_settings_come_from_the_environment_over_the_section_over_the_defaults() -> None:
    assert ServingSettings.load(None, {}) == DEFAULTS == ServingSettings()
    section = {"torch_threads": 3, "default_top_k": "4"}
    assert ServingSettings.load(section, {}) == ServingSettings(3, DEFAULTS.max_image_pixels, 4)
    loaded = ServingSettings.load(section, {"MDP_TORCH_THREADS": " 2 ", "MDP_OTHER": "x"})
    assert (loaded.torch_threads, loaded.default_top_k) == (2, 4)
    for environ, where in [
        ({"MDP_MAX_IMAGE_PIXELS": "0"}, "MDP_MAX_IMAGE_PIXELS"),
        ({"MDP_DEFAULT_TOP_K": "2.0"}, "MDP_DEFAULT_TOP_K"),
        ({"MDP_TORCH_THREADS": ""}, "MDP_TORCH_THREADS"),
    ]:
        with pytest.raises(ValueError, match=f"^{where}: expected an integer >= 1"):
            ServingSettings.load(None, environ)
    with pytest.raises(ValueError, match=r"^settings\.torch_threads: .* got True"):
        ServingSettings.load({"torch_threads": True}, {})
    assert env_name("max_image_pixels") == "MDP_MAX_IMAGE_PIXELS"


def test_materialized_domains_takes_0_a_count_or_all() -> None:
    assert DEFAULTS.materialized_domains == 0
    for raw, value in [("0", 0), (" 3 ", 3), ("all", ALL_DOMAINS), ("ALL", ALL_DOMAINS)]:
        loaded = ServingSettings.load(None, {"MDP_MATERIALIZED_DOMAINS": raw})
        assert loaded.materialized_domains == value
    assert ServingSettings.load({"materialized_domains": "all"}, {}).materialized_domains == (
        ALL_DOMAINS
    )
    for raw in ("-1", "some", "1.5"):
        with pytest.raises(
            ValueError, match=r"^MDP_MATERIALIZED_DOMAINS: expected an integer >= 0 or 'all'"
        ):
            ServingSettings.load(None, {"MDP_MATERIALIZED_DOMAINS": raw})
    assert ServiceSettings(materialized_domains="all").materialized_domains == ALL_DOMAINS  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ServiceSettings(materialized_domains=-1)


def test_both_servers_take_their_defaults_from_the_core() -> None:
    service = ServiceSettings.model_fields
    assert service["torch_threads"].default == DEFAULTS.torch_threads
    assert service["max_image_pixels"].default == DEFAULTS.max_image_pixels
    assert service["max_body_bytes"].default == MAX_BODY_BYTES
    assert HandlerConfig() == HandlerConfig.load(None, {})
    assert (HandlerConfig().torch_threads, HandlerConfig().default_top_k) == (
        DEFAULTS.torch_threads,
        DEFAULTS.default_top_k,
    )
    config = TorchServeModelConfig()
    assert (config.torch_threads, config.max_image_pixels, config.default_top_k) == (
        DEFAULTS.torch_threads,
        DEFAULTS.max_image_pixels,
        DEFAULTS.default_top_k,
    )


def test_error_body_shape() -> None:
    assert error_body(404, "unknown_domain", "unknown domain 'x'") == {
        "error": {"code": 404, "type": "unknown_domain", "message": "unknown domain 'x'"}
    }
