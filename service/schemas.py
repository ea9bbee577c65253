"""Response bodies of the API (they also document it in the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    index: int = Field(description="Class index in the domain's label list.")
    probability: float


_ANSWERED_BY = (
    "The budget level that computed this answer: the one asked for (?budget= or X-Budget; "
    "default the largest) or, under graceful degradation, a cheaper one."
)


class PredictResponse(BaseModel):
    model: str
    version: str
    domain: str
    budget: float = Field(description=_ANSWERED_BY)
    predictions: list[Prediction] = Field(description="Top-k classes, most probable first.")


class BatchItem(BaseModel):
    budget: float = Field(description=_ANSWERED_BY)
    predictions: list[Prediction]


class BatchPredictResponse(BaseModel):
    model: str
    version: str
    domain: str
    results: list[BatchItem] = Field(description="One entry per image, in request order.")


class LevelSummary(BaseModel):
    budget: float
    channels: int = Field(description="Backbone mid channels this level runs, all blocks.")
    params: int | None = None
    macs: int | None = None
    params_fraction: float | None = None
    macs_fraction: float | None = None
    measured_time_fraction: dict[str, float] | None = None
    test_accuracy: float | None = None


class DomainSummary(BaseModel):
    name: str
    num_classes: int
    image_size: int = Field(description="Side length images are resized and cropped to.")
    channels: int = Field(description="Backbone mid channels this domain runs, all blocks.")
    params: int | None = Field(None, description="Parameters of the domain's subnetwork.")
    macs: int | None = Field(None, description="Multiply-accumulates per image.")
    params_fraction: float | None = Field(None, description="Share of the backbone's params.")
    macs_fraction: float | None = Field(None, description="Share of the backbone's MACs.")
    budget: float | None = Field(
        None, description="This domain's budget: the cap on its cost in the model's budget_metric."
    )
    measured_time_fraction: dict[str, float] | None = Field(
        None,
        description="Forward time over the unpruned backbone's, measured at export, per batch "
        "size.",
    )
    predicted_time_fraction: dict[str, float] | None = Field(
        None, description="The same predicted by the latency table, if training had one."
    )
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    levels: list[LevelSummary] = Field(
        default_factory=list,
        description="The budget levels served, largest first (one unless the artifact is "
        "nested); a request picks one with ?budget= or X-Budget.",
    )


class ModelSummary(BaseModel):
    model: str
    version: str
    budget: float | None = Field(None, description="Budget the model was trained under.")
    budget_metric: str | None = None
    sharing: str | None = Field(None, description="Parameter-sharing loss used in training.")
    backbone_params: int | None = None
    backbone_macs: int | None = None
    compact_params: int | None = Field(None, description="Pruned model, all domains together.")
    compact_params_fraction: float | None = None
    channel_group: int | None = Field(None, description="Every kept width is a multiple of it.")
    artifact_weight_bytes: int | None = Field(None, description="Bytes of the weights file.")
    resident_weight_bytes: int | None = Field(
        None,
        description="Weight bytes this process keeps between batches (MDP_MATERIALIZED_DOMAINS).",
    )
    created_at: str | None = None
    domains: list[DomainSummary]


class DomainDetail(DomainSummary):
    model: str
    version: str
    budget_metric: str | None = None
    sharing: str | None = None
    labels: list[str]
    mean: list[float]
    std: list[float]
    channels_per_block: list[int] = Field(description="Mid channels used in every block.")


class Health(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    code: int = Field(description="HTTP status code.")
    type: str = Field(description="Short snake_case error type.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
