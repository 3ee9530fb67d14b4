"""Procedure registry and the `procedure` decorator."""

from __future__ import annotations

import inspect
import keyword
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Procedure:
    """A registered function with what the worker needs to call it."""

    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    is_async: bool


class Registry:
    """A named set of procedures that a Worker serves."""

    def __init__(self) -> None:
        self._procs: dict[str, Procedure] = {}
        self._lock = threading.Lock()

    @overload
    def procedure(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def procedure(
        self, fn: None = None, /, *, name: str | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def procedure(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Register `fn` (under `name`, default its own name) and return it unchanged.

        Raises ValueError when the name is taken, is not an identifier, or starts with "_".
        """

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.add(f, name=name)
            return f

        if fn is not None:
            return register(fn)
        return register

    def add(self, fn: Callable[..., Any], *, name: str | None = None) -> Procedure:
        """Register `fn` without decorating; returns its Procedure record."""
        if not callable(fn):
            raise TypeError(f"cannot register {fn!r}: it is not callable")
        proc_name = name if name is not None else getattr(fn, "__name__", "")
        if not isinstance(proc_name, str) or not proc_name.isidentifier():
            raise ValueError(
                f"procedure name {proc_name!r} is not a Python identifier; "
                "pass name='...' with letters, digits and underscores"
            )
        if keyword.iskeyword(proc_name) or proc_name.startswith("_"):
            raise ValueError(
                f"procedure name {proc_name!r} is reserved (keyword or leading underscore); "
                "pick another with name='...'"
            )
        proc = Procedure(
            name=proc_name,
            fn=fn,
            signature=inspect.signature(fn),
            is_async=inspect.iscoroutinefunction(fn),
        )
        with self._lock:
            if proc_name in self._procs:
                raise ValueError(
                    f"procedure {proc_name!r} is already registered "
                    f"(by {self._procs[proc_name].fn!r}); pass name='...' to register it apart"
                )
            self._procs[proc_name] = proc
        return proc

    def get(self, name: str) -> Procedure | None:
        """The procedure registered under `name`, or None."""
        return self._procs.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._procs)

    def __contains__(self, name: object) -> bool:
        return name in self._procs

    def __len__(self) -> int:
        return len(self._procs)


default_registry = Registry()


@overload
def procedure(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def procedure(*, name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def procedure(fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
    """Register a function on the default registry and return it unchanged.

    Use as `@rpc.procedure` or `@rpc.procedure(name="other")`.
    """
    if fn is not None:
        return default_registry.procedure(fn)
    return default_registry.procedure(name=name)
