"""The agent serves exactly the procedures of `plexus.protocol`, under their declared names."""

from __future__ import annotations

from dataclasses import fields

from learner_agent.procedures import Agent, make_registry
from plexus import protocol


def test_the_registry_serves_every_declared_procedure_with_its_shape() -> None:
    agent = Agent("w1", None)  # type: ignore[arg-type]  # registering calls nothing out
    registry = make_registry(agent)
    assert sorted(registry.names()) == sorted(protocol.PROCEDURES)
    for name, call in protocol.PROCEDURES.items():
        proc = registry.get(name)
        assert proc is not None, name
        assert list(proc.signature.parameters) == [f.name for f in fields(call)], name
