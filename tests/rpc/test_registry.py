"""The procedure decorator: returns the function unchanged, rejects bad names."""

from __future__ import annotations

import inspect

import pytest

import rpc


def test_decorator_returns_the_function_unchanged() -> None:
    reg = rpc.Registry()

    def train(x: int, *, lr: float = 0.1) -> float:
        return x * lr

    decorated = reg.procedure(train)
    assert decorated is train
    assert inspect.signature(decorated) == inspect.signature(train)
    assert decorated(10) == pytest.approx(1.0)
    assert reg.names() == ["train"]


def test_named_registration_and_async() -> None:
    reg = rpc.Registry()

    @reg.procedure(name="hello")
    async def greet(name: str) -> str:
        return f"hello {name}"

    proc = reg.get("hello")
    assert proc is not None and proc.fn is greet and proc.is_async
    assert "greet" not in reg


def test_default_registry_decorator() -> None:
    @rpc.procedure(name="rpc_tests_default_probe")
    def probe_fn() -> int:
        return 1

    assert rpc.default_registry.get("rpc_tests_default_probe") is not None
    assert probe_fn() == 1


def test_duplicate_names_are_rejected() -> None:
    reg = rpc.Registry()
    reg.add(lambda: 1, name="f")
    with pytest.raises(ValueError, match="already registered"):
        reg.add(lambda: 2, name="f")

    @reg.procedure
    def g() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        reg.procedure(name="g")(lambda: None)


@pytest.mark.parametrize("name", ["has space", "1st", "a-b", "", "class", "_private", "a/b"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=r"identifier|reserved"):
        rpc.Registry().add(lambda: None, name=name)


def test_lambda_without_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="<lambda>"):
        rpc.Registry().procedure(lambda: None)
