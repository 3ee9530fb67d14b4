"""Task spec validation: defaults, files, and errors that name the bad field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plexus.errors import SpecError
from plexus.spec import TaskSpec, load_spec

PROTOCOL_EXAMPLE = """
name: mnist-dab
model: twonn
seed: 0
dataset: {name: mnist5k, path: null, test_fraction: 0.2}
partition: {kind: iid, alpha: 1.0, shard_size: 500}
training: {optimizer: sgd, lr: 0.05, batch_size: 32, iterations: 1}
mode: sync
sync: {allocator: dab, deadline_s: 20.0, rounds: 3, grace_s: 5.0, benchmark_shards: 2,
       safety_quantile: null, total_shards: null}
"""


def test_protocol_example_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(PROTOCOL_EXAMPLE)
    spec = load_spec(path)
    assert spec.model.name == "twonn"
    assert spec.sync is not None and spec.sync.deadline_s == 20.0
    assert spec.async_ is None


def test_json_round_trip_through_to_dict(tmp_path: Path) -> None:
    spec = load_spec({"mode": "async", "async": {"k": 4}})
    path = tmp_path / "task.json"
    path.write_text(json.dumps(spec.to_dict()))
    again = load_spec(path)
    assert again == spec
    assert again.async_ is not None and again.async_.k == 4


def test_mode_alone_gets_its_section_defaults() -> None:
    assert load_spec({}).sync is not None
    assert load_spec({"mode": "async"}).async_ is not None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"sync": {"deadline_s": -1}}, "sync.deadline_s"),
        ({"partition": {"shard_size": 0}}, "partition.shard_size"),
        ({"model": "resnet50"}, "model"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"training": {"lr": 0.1, "momentum": 0.9}}, "training.momentum: unknown key"),
        ({"mode": "async", "sync": {}}, "mode:"),
        ({"mode": "sync", "async": {}}, "mode:"),
        ({"dataset": {"name": "mnist"}}, "dataset"),
        ({"training": {"iterations": 0}}, "training.iterations"),
    ],
)
def test_impossible_values_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert field in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(listy)


def test_spec_is_immutable() -> None:
    spec = TaskSpec()
    with pytest.raises(ValueError):
        spec.model = "threenn"  # type: ignore[misc]
