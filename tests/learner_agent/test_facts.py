"""The device facts an agent reports: temperature and throttling read from a sysfs tree the
way Linux lays it out (a Raspberry Pi's here, written by the test), and the real machine's."""

from __future__ import annotations

from pathlib import Path

from learner_agent.facts import PI_THROTTLE_FILE, device_facts, thermal_facts


def _zone(root: Path, i: int, milli: str) -> None:
    zone = root / "class" / "thermal" / f"thermal_zone{i}"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(milli + "\n")


def test_a_pi_reports_its_hottest_zone_and_what_the_firmware_limits_now(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "61234")
    _zone(tmp_path, 1, "48000")
    _zone(tmp_path, 2, "-274000")  # a broken sensor is skipped, not reported
    firmware = tmp_path / PI_THROTTLE_FILE
    firmware.parent.mkdir(parents=True)
    firmware.write_text("0x50005\n")  # under-voltage and throttled now (+ sticky history bits)
    facts = thermal_facts(tmp_path)
    assert facts == {"temperature_c": 61.2, "throttled": True,
                     "throttle_reasons": ["under-voltage", "throttled"]}
    firmware.write_text("0x50000\n")  # only "has happened" bits: not limited now
    assert thermal_facts(tmp_path)["throttled"] is False


def test_a_device_without_sensors_reports_nothing_and_garbage_never_raises(tmp_path: Path) -> None:
    assert thermal_facts(tmp_path) == {}
    _zone(tmp_path, 0, "hot")
    firmware = tmp_path / PI_THROTTLE_FILE
    firmware.parent.mkdir(parents=True)
    firmware.write_text("not hex")
    assert thermal_facts(tmp_path) == {}


def test_this_machines_facts_carry_the_thermal_ones_it_exposes() -> None:
    facts = device_facts()
    assert set(thermal_facts()) <= set(facts)  # values may move between two reads
    assert facts["cores"] >= 1 and isinstance(facts["model_factories"], list)
