"""The `split` section of a task spec: where the network is cut and the pathways between halves.

DynSplit (paper `004_…`, sec. IV): the device runs the layers up to the cut, a gate picks one
pathway per sample, the pathway's encoder (an autoencoder bottleneck, or none) and quantiser
compress the activations, and the server decodes them and runs the rest of the network.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Quantisation widths a pathway may use: 1..8 bits are packed integers with a per-sample
# minimum and step; 16 and 32 send float16 / float32 values.
Bits = Literal[1, 2, 4, 8, 16, 32]
BITS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
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
    target ratio until the expected batch fits (null: the target ratio as given)."""

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

    @model_validator(mode="after")
    def _one_path_means_no_gate(self) -> SplitSpec:
        if len(self.paths) == 1 and self.link_budget_s is not None:
            raise ValueError("split.link_budget_s needs at least two paths (with one path "
                             "there is no ratio to lower)")
        return self
