"""Built-in handlers: ``noop``, ``echo``, ``fail``, ``sleep``, ``http.request``, ``shell``,
and the sensors ``sensor.kafka``, ``sensor.file``, ``sensor.callback``, ``sensor.run``,
``sensor.time``."""

from __future__ import annotations

from handlers import basic, http, sensors, sensors_time, shell
from orchestrator.registry import HandlerRegistry

__all__ = ["builtin_registry"]

_BUILTIN_MODULES = (basic, http, shell, sensors, sensors_time)


def builtin_registry() -> HandlerRegistry:
    """A fresh registry holding every built-in handler.

    Fresh on each call, so a caller may merge its own handlers into it (or
    replace a built-in through :meth:`HandlerRegistry.merged`) without
    affecting anyone else.
    """
    registry = HandlerRegistry()
    for module in _BUILTIN_MODULES:
        registry.register_module(module)
    # http.request shares one client session per event loop; close it at stop.
    registry.on_shutdown(http.close_sessions)
    return registry
