"""Handlers registered by name.

A registry is an ordinary object: the loader fills a fresh one per load so a
reload never mixes old and new code. The ``@handler`` decorator only marks a
function; whoever loads the module decides which registry it joins.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from orchestrator.errors import SpecError

HandlerFn = Callable[..., Awaitable[Any] | Any]
F = TypeVar("F", bound=HandlerFn)

#: Attribute set on functions by ``@handler``; the loader collects them.
HANDLER_NAME_ATTR = "__orchestrator_handler__"


def handler(name: str | None = None) -> Callable[[F], F]:
    """Mark a function as a handler called ``name`` (default: its own name).

    The function receives the :class:`~orchestrator.context.TaskContext` first
    and the task's rendered inputs as keyword arguments; it returns JSON-able
    output. It may be ``async def`` (preferred) or a plain function, which then
    runs in a thread.
    """

    def mark(fn: F) -> F:
        setattr(fn, HANDLER_NAME_ATTR, name or fn.__name__)
        return fn

    return mark


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, HandlerFn] = {}
        self._origins: dict[str, str] = {}
        self._shutdown: list[Callable[[], Awaitable[None]]] = []

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` when the process stops (e.g. close a shared HTTP session)."""
        if hook not in self._shutdown:
            self._shutdown.append(hook)

    async def shutdown(self) -> None:
        for hook in self._shutdown:
            await hook()

    def register(self, name: str, fn: HandlerFn, *, origin: str = "") -> None:
        existing = self._handlers.get(name)
        if existing is not None and existing is not fn:
            raise SpecError(
                f"handler {name!r} is already registered by {self._origins.get(name) or '?'}",
                file=origin or None,
            )
        self._handlers[name] = fn
        self._origins[name] = origin

    def register_module(self, module: Any, *, origin: str = "") -> list[str]:
        """Register every ``@handler``-marked function defined in ``module``."""
        names = []
        for value in vars(module).values():
            name = getattr(value, HANDLER_NAME_ATTR, None)
            if isinstance(name, str) and callable(value):
                self.register(name, value, origin=origin or getattr(module, "__file__", ""))
                names.append(name)
        return names

    def get(self, name: str) -> HandlerFn:
        return self._handlers[name]

    def is_async(self, name: str) -> bool:
        return inspect.iscoroutinefunction(self._handlers[name])

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def merged(self, other: HandlerRegistry) -> HandlerRegistry:
        """A new registry holding both; ``other`` wins on a name clash."""
        out = HandlerRegistry()
        out._handlers = {**self._handlers, **other._handlers}
        out._origins = {**self._origins, **other._origins}
        out._shutdown = [*self._shutdown, *(h for h in other._shutdown if h not in self._shutdown)]
        return out
