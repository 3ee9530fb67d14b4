"""The task spec: what to train, on which data, how, and under which allocator or aggregator.

A spec is YAML or JSON (`docs/protocol.md`); unknown keys and impossible values are rejected
with a `plexus.errors.SpecError` whose message names the offending field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_serializer,
    model_validator,
)

from plexus.errors import SpecError
from plexus.layers import LayerSpec, bare_layers

ModelName = Literal["twonn", "threenn", "convnet", "fashionnet", "lenet5"]
DatasetName = Literal["mnist5k", "digits", "synthetic", "mnist", "fashion_mnist", "files"]
DataFormat = Literal["npz", "safetensors", "csv", "images", "idx"]
Normalization = Literal["none", "divide_255", "standardize"]
MODEL_NAMES: tuple[str, ...] = ("twonn", "threenn", "convnet", "fashionnet", "lenet5")
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
# Asynchronous aggregators and staleness handlers: written once here, because a spec is checked
# without importing the orchestrator; `orchestrator.aggregation.registry` refuses to import
# unless its registries hold exactly these names.
AggregatorName = Literal["spin", "fedbuff", "port"]
StalenessName = Literal["none", "poly", "dcasgd", "inversion"]
AGGREGATOR_NAMES: tuple[str, ...] = get_args(AggregatorName)
STALENESS_NAMES: tuple[str, ...] = get_args(StalenessName)
# Robust aggregation rules (sync rounds and async buffers alike); the same check holds them
# equal to `orchestrator.aggregation.robust.RULES`.
RobustRuleName = Literal[
    "fedavg", "clip", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip"
]
ROBUST_RULE_NAMES: tuple[str, ...] = get_args(RobustRuleName)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """The network: a zoo `name`, declared `layers`, or an installed `factory` (exactly one).

    `model: twonn` is short for `model: {name: twonn}`. `input_shape` and `num_classes` are
    the data's; the orchestrator fills them in at submission from the dataset (when given,
    they must match it), so a learner builds the same network without the data. For a
    factory, `distribution` ("name==version", filled in at submission) is the plugin package
    the orchestrator resolved it from; learners with another version are skipped.
    """

    name: ModelName | None = None
    layers: tuple[LayerSpec, ...] | None = None
    factory: str | None = Field(None, min_length=1, max_length=200,
                                pattern=r"^[A-Za-z0-9_.:-]+$")
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, min_length=1, max_length=4)
    num_classes: int | None = Field(None, ge=2)
    distribution: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "layers" in data:
            data = {**data, "layers": bare_layers(data["layers"])}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSpec:
        given = [k for k in ("name", "layers", "factory") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("model: give exactly one of name (a zoo model: "
                             f"{', '.join(MODEL_NAMES)}), layers or factory"
                             + (f"; got {' and '.join(given)}" if given else ""))
        if self.layers is not None and not self.layers:
            raise ValueError("model.layers: give at least one layer")
        if self.kwargs and self.factory is None:
            raise ValueError("model.kwargs: only a factory model takes kwargs")
        return self

    @model_serializer(mode="wrap")
    def _as_short(self, handler: Any) -> Any:
        # A bare zoo name stays `model: twonn` in the stored and shown spec.
        if self.name is not None and self.input_shape is None and self.num_classes is None:
            return self.name
        return {k: v for k, v in handler(self).items()
                if v is not None and not (k == "kwargs" and not v)}

    @property
    def kind(self) -> str:
        """"zoo", "layers" or "factory"."""
        return "zoo" if self.name else "layers" if self.layers else "factory"

    def describe(self) -> str:
        """A short name for messages: the zoo name, "declared layers" or the factory."""
        if self.name:
            return self.name
        return f"{len(self.layers or ())} declared layers" if self.layers else \
            f"factory {self.factory!r}"


class DatasetSpec(_Strict):
    """Which dataset to load, from where, how to split and normalise it (see the docs:
    docs/your-model-and-data.md, Data).

    Built-in names need no files; `files` reads the user's files (`format` says which kind, or
    the path's suffix does) from under the orchestrator's data root, or, with `device: true`,
    from each agent's own `--data` directory (the orchestrator then never sees a sample).
    `input_shape`, `num_classes` and `classes` are read from the data at submission and
    recorded in the task; a device-data task without a test set on the orchestrator states them.
    """

    name: DatasetName = "mnist5k"
    path: str | None = None
    format: DataFormat | None = None
    test_path: str | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Only for `synthetic`: how many samples to generate (train + test).
    samples: int = Field(2000, ge=20, le=1_000_000)
    # CSV: the label column and the feature columns (default: every other column).
    label_column: str = "label"
    feature_columns: list[str] | None = None
    # Images: resize every picture to (height, width); grayscale gives 1 channel, else 3.
    image_size: tuple[int, int] | None = None
    grayscale: bool = False
    # none: as stored; divide_255: x / 255 (pixels); standardize: per-feature mean 0, std 1
    # from the training split. Default: divide_255 for images and IDX, none for the rest.
    normalize: Normalization | None = None
    device: bool = False  # the data lives on the agents (`plexus agent run --data DIR`)
    # Filled in at submission from the data (stated by the user for device data).
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = Field(None, ge=2, le=1_000_000)
    classes: list[str] | None = None  # original label of class 0, 1, …

    @model_validator(mode="after")
    def _path_when_files(self) -> DatasetSpec:
        if self.name == "mnist" and not self.path:
            raise ValueError(
                f"dataset '{self.name}' is read from local IDX files: set dataset.path to "
                "the directory holding them"
            )
        if self.name == "files" and not self.device and not self.path:
            raise ValueError("dataset 'files' needs dataset.path (under the orchestrator's "
                             "data root) or device: true (the agents' --data directories)")
        for field_name in ("image_size", "input_shape"):
            value = getattr(self, field_name)
            if value is not None and (not value or min(value) < 1):
                raise ValueError(f"dataset.{field_name} must be positive sizes, got {value}")
        if self.feature_columns is not None and not self.feature_columns:
            raise ValueError("dataset.feature_columns is empty: name at least one column, or "
                             "leave it out to use every column but the label")
        if self.device and self.name != "files":
            raise ValueError("device: true needs name: files (the agents' own files)")
        if self.classes is not None and self.num_classes not in (None, len(self.classes)):
            raise ValueError(f"classes names {len(self.classes)} labels but num_classes is "
                             f"{self.num_classes}")
        return self


class PartitionSpec(_Strict):
    """How the training split is cut into fixed-size shards."""

    kind: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(1.0, gt=0.0)  # Dirichlet concentration
    shard_size: int = Field(500, ge=1)  # samples per shard (thesis: 500)


class TrainingSpec(_Strict):
    """Local optimisation settings; `iterations` is μ, passes over the allocated shards."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    batch_size: int = Field(32, ge=1)
    iterations: int = Field(1, ge=1)


class AggregationSpec(_Strict):
    """How updates are combined (docs/algorithms.md, "Robust aggregation"): `rule`, and
    `byzantine` (fraction of updates assumed malicious: trimmed_mean, krum, multi_krum),
    `clip_norm` (τ of clip / centered_clip; null = the median update norm), `select`
    (multi_krum's m; null = n − f), `iterations` (centered_clip's L)."""

    rule: RobustRuleName = "fedavg"
    byzantine: float = Field(0.2, ge=0.0, lt=0.5)
    clip_norm: float | None = Field(None, gt=0.0)
    select: int | None = Field(None, ge=1)
    iterations: int = Field(1, ge=1, le=100)


class SyncSpec(_Strict):
    """Synchronous mode: global update cycles with a deadline D (thesis ch. 3 and 4)."""

    allocator: Literal["dab", "csa", "equal", "med", "mmtt_uncertain", "mmtt_ideal"] = "dab"
    deadline_s: float = Field(20.0, gt=0.0)  # D, seconds per global update cycle
    rounds: int = Field(3, ge=1)  # G
    grace_s: float = Field(5.0, ge=0.0)
    benchmark_shards: int = Field(2, ge=1)  # n of subset benchmarking
    safety_quantile: float | None = Field(None, gt=0.0, lt=1.0)
    total_shards: int | None = Field(None, ge=1)
    # Consecutive rounds in which no learner trained (all failed, were skipped or got nothing)
    # that a task tolerates; one more, or a task whose every round was empty, ends `failed`.
    max_empty_rounds: int = Field(1, ge=0)
    # DAB / CSA: ask the learners again every round (they answer from the rounds they really
    # trained, learner_agent/calibration.py), or once per task as thesis alg. 10 does.
    replan: Literal["each_round", "once"] = "each_round"
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)


class AsyncSpec(_Strict):
    """Asynchronous mode: SPIN, FedBuff or PORT aggregation (SPIN paper)."""

    aggregator: AggregatorName = "spin"
    k: int = Field(10, ge=1)
    pi_s: float = Field(30.0, gt=0.0)
    pull_threshold: int = Field(50, ge=1)
    epochs: int = Field(1, ge=1)
    arrival_rate: float = Field(1.0, gt=0.0)  # λ, samples/s
    staleness: StalenessName = "none"
    max_updates: int = Field(100, ge=1)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)


# -- split learning (DynSplit, paper `004_…`; docs/split-learning.md) ------------------
# Quantisation widths a pathway may use: 1..8 bits are packed integers with a per-sample
# minimum and step; 16 and 32 send float16 / float32 values.
Bits = Literal[1, 2, 4, 8, 16, 32]
BITS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
# Symmetric codes need a zero level (no 1 bit); float16 loses the small gradients (below
# 6e-5 it is subnormal, under 6e-8 zero), so 16 is not offered either.
GradBits = Literal[2, 4, 8, 32]
MAX_PATHS = 4


class PathSpec(BaseModel):
    """One pathway: `channels` of the autoencoder bottleneck (null: no autoencoder, the
    activations themselves) and the quantisation `bits` of what it sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channels: int | None = Field(None, ge=1, le=4096)
    bits: Bits = 8


def _scenario_1() -> tuple[PathSpec, ...]:
    # Paper scenario 1: an uncompressed pathway and a 1-channel bottleneck, both quantised.
    return (PathSpec(channels=None, bits=8), PathSpec(channels=1, bits=8))


class SplitSpec(BaseModel):
    """Split learning (DynSplit): `cut` is the index of the first layer the server runs (the
    device runs layers 0..cut-1); `paths` are the pathways, path 0 the widest; `target_ratio`
    is the share of samples that should take path 0 (paper: ratio = |data on pathway 1| /
    |data|), held by a penalty `ratio_weight`·(target − batch ratio)² (paper eq. 5); `tau` is
    the Gumbel-softmax temperature (eq. 4). `rounds`: passes over each learner's data, after
    each of which the device halves are averaged (SplitFed). `link_budget_s`: seconds one
    batch's upload may take at the learner's measured bandwidth b_k; the learner lowers its
    target ratio until the expected batch fits (null: the target ratio as given).
    `grad_bits`: how the server returns the gradient at the codes (32: float32; 2, 4, 8:
    per-sample symmetric quantisation, `plexus.split.codec.quantise_grad`, rounded to the
    nearest level or stochastically: `grad_rounding`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cut: int = Field(ge=1, le=10_000)
    paths: tuple[PathSpec, ...] = Field(default_factory=_scenario_1, min_length=1,
                                        max_length=MAX_PATHS)
    target_ratio: float = Field(0.2, ge=0.0, le=1.0)
    ratio_weight: float = Field(10.0, ge=0.0, le=1e6)
    tau: float = Field(1.0, gt=0.0, le=100.0)
    rounds: int = Field(2, ge=1, le=10_000)
    link_budget_s: float | None = Field(None, gt=0.0)
    max_batches: int | None = Field(None, ge=1)  # per learner and round (null: all its data)
    round_timeout_s: float = Field(600.0, gt=0.0)  # a learner not done by then is left out
    grad_bits: GradBits = 32  # the gradient returned at the codes (docs/split-learning.md)
    grad_rounding: Literal["nearest", "stochastic"] = "nearest"  # of grad_bits < 32

    @model_validator(mode="after")
    def _one_path_means_no_gate(self) -> SplitSpec:
        if len(self.paths) == 1 and self.link_budget_s is not None:
            raise ValueError("split.link_budget_s needs at least two paths (with one path "
                             "there is no ratio to lower)")
        return self


class TaskSpec(_Strict):
    """A whole training task; `mode` selects which of `sync` / `async` must be present."""

    name: str = "task"
    model: ModelSpec = Field(default_factory=lambda: ModelSpec.model_validate("twonn"))
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and torch take 0..2**32-1 everywhere
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    mode: Literal["sync", "async", "split"] = "sync"
    sync: SyncSpec | None = None
    async_: AsyncSpec | None = Field(None, alias="async")
    split: SplitSpec | None = None  # split learning (DynSplit): docs/split-learning.md

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _default_section(cls, data: Any) -> Any:
        # A spec that names only its mode gets that mode's defaults, so `mode: async` alone is
        # a complete spec; a section for another mode is still a mistake (checked below).
        # (A split task has no defaults for its cut, so `mode: split` needs its section.)
        if isinstance(data, dict):
            mode = data.get("mode", "sync")
            if mode in ("sync", "async") and not any(
                    k in data for k in ("sync", "async", "async_", "split")):
                data = {**data, mode: {}}
        return data

    @model_validator(mode="after")
    def _mode_matches_section(self) -> TaskSpec:
        sections = {"sync": self.sync, "async": self.async_, "split": self.split}
        for key, section in sections.items():
            if key != self.mode and section is not None:
                raise ValueError(
                    f"mode: '{self.mode}' is set but an '{key}' section is given: remove it "
                    f"or set mode: {key}"
                )
        if sections[self.mode] is None:
            raise ValueError(f"mode: '{self.mode}' is set: add an '{self.mode}' section")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready data, with `async` spelled as in the YAML."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """Every error of `exc` as "field: what is wrong", fields under `prefix` when given."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        loc = loc.replace("async_", "async")
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the task spec; see docs/protocol.md)"
        elif err["type"] == "union_tag_invalid":
            msg = (f"unknown layer type {err['input'].get('type')!r}"
                   if isinstance(err["input"], dict) else msg)
        # Whole-spec checks already start their message with the field they are about.
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _describe(exc: ValidationError) -> str:
    return "invalid task spec: " + describe_errors(exc)


def parse_spec(data: dict[str, Any]) -> TaskSpec:
    """Validate a spec given as a dict; raise `SpecError` naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"a task spec must be a mapping, got {type(data).__name__}")
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_describe(exc)) from None


def load_spec(source: str | Path | dict[str, Any] | TaskSpec) -> TaskSpec:
    """Load a spec from a YAML/JSON file path, a dict, or pass a `TaskSpec` through."""
    if isinstance(source, TaskSpec):
        return source
    if isinstance(source, dict):
        return parse_spec(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read task spec {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML: {exc}") from None
    return parse_spec(data)
