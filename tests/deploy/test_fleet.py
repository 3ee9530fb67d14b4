"""Fleet files and unit parsing: what the testbed accepts and how it refuses the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import FleetError
from deploy.testbed.fleet import load_fleet
from deploy.testbed.profiles import MIB, PROFILES, parse_rate, parse_size

FLEETS = Path(__file__).resolve().parents[2] / "deploy" / "testbed" / "fleets"


def test_count_expands_and_overrides_apply() -> None:
    fleet = load_fleet(
        {
            "cpu_scale": 0.5,
            "learners": [
                {"name": "pi", "profile": "pi1", "count": 3},
                {
                    "name": "desk",
                    "profile": "desktop-ethernet",
                    "cpu": 0.8,
                    "rate": "40mbit",
                    "memory": "1GiB",
                },
            ],
        }
    )
    assert [lr.name for lr in fleet.learners] == ["pi1", "pi2", "pi3", "desk"]
    assert fleet.learners[0].profile.cpu == pytest.approx(PROFILES["pi1"].cpu * 0.5)
    desk = fleet.learners[3].profile
    assert desk.cpu == pytest.approx(0.4)
    assert desk.down_rate == desk.up_rate == pytest.approx(40e6 / 8)
    assert desk.memory_bytes == 1024 * MIB


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"learners": [{"profile": "pi9"}]}, "unknown profile"),
        ({"learners": [{"profile": "pi1", "colour": "red"}]}, "unknown key"),
        ({"prefix": "this-is-too-long", "learners": [{"profile": "pi1"}]}, "prefix"),
        ({"subnet": "8.8.8.0/24", "learners": [{"profile": "pi1"}]}, "not private"),
        (
            {"learners": [{"name": "a", "profile": "pi1"}, {"name": "a", "profile": "pi2"}]},
            "appear twice",
        ),
        ({"subnet": "10.213.0.0/28", "learners": [{"profile": "pi1", "count": 10}]}, "do not fit"),
        ({"learners": []}, "non-empty"),
    ],
)
def test_bad_fleets_are_refused_with_a_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(FleetError, match=message):
        load_fleet(data)


def test_units() -> None:
    assert parse_rate("20mbit") == pytest.approx(2.5e6)
    assert parse_rate("2mbps") == pytest.approx(2e6)
    assert parse_rate(125000) == 125000.0
    assert parse_size("512MiB") == 512 * MIB
    assert parse_size("1g") == 1024 * MIB
    with pytest.raises(FleetError, match="not understood"):
        parse_rate("fast")
    with pytest.raises(FleetError, match="below"):
        parse_size("1MiB")


@pytest.mark.parametrize("path", sorted(FLEETS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_fleets_load(path: Path) -> None:
    fleet = load_fleet(path)
    assert fleet.learners
