"""Isolation of hook implementations, the pluggy way: each implementation of an isolated hook
is wrapped when its plugin is registered, and pluggy calls the wrappers.

A wrapper catches what its implementation raises, reports it to a ``HookMonitor`` as a
``PluginFailure`` naming the plugin, and returns None (which pluggy leaves out of the results),
so the other implementations still run. It also reports which plugin returned which value, so
that a list of results can be traced back to its plugins. ``wrapper=True`` implementations
(and old-style ``hookwrapper`` ones, run as new-style wrappers) are isolated the same way:
a failing setup or teardown is recorded and the call goes on as if the wrapper were absent;
what a wrapper adds to the results is counted as its plugin's.

pluggy keeps ordering (``tryfirst``/``trylast``), argument subsets and tracing, because it
reads the hookimpl options and argument names through each wrapper (``functools.wraps``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from miscore.core.registry import PluginFailure

_IMPL_MARKER = "miscore_impl"  # where pluggy's HookimplMarker("miscore") keeps its options


@dataclass
class HookCall:
    """What the wrapped implementations did during one call of an isolated hook."""

    observe: Callable[[], dict[int, str]] | None = None
    #: (plugin, value) for every value an implementation returned or a wrapper added
    returned: list[tuple[str, object]] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    #: plugin -> what ``observe`` found new after its implementation ran (command names)
    added: dict[str, list[str]] = field(default_factory=dict)
    #: what ``observe`` saw when the running implementation started
    snapshot: dict[int, str] = field(default_factory=dict)

    def origin(self, value: object) -> str:
        """The plugin that returned ``value`` (by identity)."""
        for plugin, returned in self.returned:
            if returned is value:
                return plugin
        return "unknown"


class HookMonitor:
    """Receives the reports of the per-implementation wrappers for the current hook call."""

    def __init__(self) -> None:
        self._calls: list[HookCall] = []
        #: failures of isolated implementations called outside the manager's methods
        self.unclaimed: list[PluginFailure] = []

    def start(self, observe: Callable[[], dict[int, str]] | None = None) -> HookCall:
        call = HookCall(observe=observe)
        self._calls.append(call)
        return call

    def stop(self) -> None:
        self._calls.pop()

    def failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        failure = PluginFailure(plugin, hook, f"{type(exc).__name__}: {exc}")
        (self._calls[-1].failures if self._calls else self.unclaimed).append(failure)

    def returned(self, plugin: str, value: object) -> None:
        if self._calls and value is not None:
            self._calls[-1].returned.append((plugin, value))

    def wrapped(self, plugin: str, result: object) -> None:
        """A wrapper's result: the items no implementation returned are the wrapper's."""
        if not self._calls or not isinstance(result, list):
            return
        call = self._calls[-1]
        for item in result:
            if not any(value is item for _, value in call.returned):
                call.returned.append((plugin, item))

    def enter(self, plugin: str) -> None:
        if self._calls and self._calls[-1].observe is not None:
            call = self._calls[-1]
            assert call.observe is not None
            call.snapshot = call.observe()

    def leave(self, plugin: str) -> None:
        if self._calls and self._calls[-1].observe is not None:
            call = self._calls[-1]
            assert call.observe is not None
            new = [name for key, name in call.observe().items() if key not in call.snapshot]
            if new:
                call.added.setdefault(plugin, []).extend(new)


def _isolated_impl(
    function: Callable[..., Any], plugin: str, hook: str, monitor: HookMonitor
) -> Callable[..., Any]:
    """A plain implementation that records an exception instead of raising it."""

    def isolated(*args: Any, **kwargs: Any) -> Any:
        monitor.enter(plugin)
        try:
            value = function(*args, **kwargs)
        except Exception as exc:
            monitor.failed(plugin, hook, exc)
            return None  # pluggy leaves None out of the results
        finally:
            monitor.leave(plugin)
        monitor.returned(plugin, value)
        return value

    return isolated


def _isolated_wrapper(
    function: Callable[..., Any],
    plugin: str,
    hook: str,
    monitor: HookMonitor,
    *,
    old_style: bool,
) -> Callable[..., Generator[None, Any, Any]]:
    """A ``wrapper=True`` implementation (or an old-style ``hookwrapper`` run as one) whose
    failing setup or teardown is recorded and skipped: the call goes on without it."""

    def isolated(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        monitor.enter(plugin)
        try:
            teardown = function(*args, **kwargs)
            next(teardown)
        except Exception as exc:  # StopIteration included: a wrapper that did not yield
            monitor.failed(plugin, hook, exc)
            return (yield)
        finally:
            monitor.leave(plugin)
        if old_style:
            return (yield from _old_style_teardown(teardown, plugin, hook, monitor))
        try:
            result = yield
        except BaseException as exc:  # not a plugin failure: those never reach here
            try:
                teardown.throw(exc)
            except StopIteration as stop:
                return stop.value
            teardown.close()
            raise RuntimeError(f"plugin {plugin!r}: the {hook} wrapper yields twice") from exc
        monitor.enter(plugin)
        try:
            teardown.send(result)
        except StopIteration as stop:
            value = stop.value
        except Exception as exc:
            monitor.failed(plugin, hook, exc)
            return result
        else:
            teardown.close()
            monitor.failed(plugin, hook, RuntimeError("the wrapper yields twice"))
            return result
        finally:
            monitor.leave(plugin)
        if isinstance(result, list) and not isinstance(value, list):
            monitor.failed(plugin, hook, TypeError(f"the wrapper returned {value!r}, not a list"))
            return result
        monitor.wrapped(plugin, value)
        return value

    return isolated


def _old_style_teardown(
    teardown: Generator[None, Any, Any], plugin: str, hook: str, monitor: HookMonitor
) -> Generator[None, Any, Any]:
    """The second half of an old-style hookwrapper: it gets a ``pluggy.Result`` to inspect
    or change (``force_result``), as pluggy gives it."""
    try:
        outcome: pluggy.Result[Any] = pluggy.Result((yield), None)
    except BaseException as exc:
        outcome = pluggy.Result(None, exc)
    monitor.enter(plugin)
    try:
        teardown.send(outcome)
    except StopIteration:
        pass
    except Exception as exc:
        monitor.failed(plugin, hook, exc)
    else:
        teardown.close()
        monitor.failed(plugin, hook, RuntimeError("the hookwrapper yields twice"))
    finally:
        monitor.leave(plugin)
    value = outcome.get_result()
    monitor.wrapped(plugin, value)
    return value


class RegisteredPlugin:
    """What pluggy registers for a plugin: its hook implementations, the isolated ones
    wrapped. pluggy reads the hookimpl options from each function, as for the plugin."""

    def __init__(self, plugin: object, impls: dict[str, Callable[..., Any]]) -> None:
        self._miscore_plugin = plugin
        self.__dict__.update(impls)

    def __repr__(self) -> str:
        return repr(self._miscore_plugin)


def isolate(
    function: Callable[..., Any],
    opts: dict[str, Any],
    plugin: str,
    hook: str,
    monitor: HookMonitor,
) -> Callable[..., Any]:
    """``function`` (a hook implementation of ``plugin`` with hookimpl options ``opts``),
    wrapped to report to ``monitor`` and to record an exception instead of raising it."""
    is_wrapper = bool(opts.get("wrapper") or opts.get("hookwrapper"))
    if is_wrapper and not inspect.isgeneratorfunction(function):
        return function  # pluggy refuses it at registration, with its own message
    isolated: Callable[..., Any]
    if is_wrapper:
        old_style = bool(opts.get("hookwrapper"))
        isolated = _isolated_wrapper(function, plugin, hook, monitor, old_style=old_style)
        opts = {**opts, "wrapper": True, "hookwrapper": False}  # run as a new-style wrapper
    else:
        isolated = _isolated_impl(function, plugin, hook, monitor)
    functools.update_wrapper(isolated, function)  # pluggy reads argument names through it
    setattr(isolated, _IMPL_MARKER, opts)
    return isolated
