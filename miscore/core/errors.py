"""Errors that the CLI turns into one line and an exit code.

Library code raises these; only the CLI catches them. ``exit_code`` is 2 for bad input
(a file, a config field, a name the user gave) and 1 for a failure at run time.
"""

from __future__ import annotations


class MiscoreError(Exception):
    """Base of every error miscore raises on purpose."""

    exit_code: int = 1


class InputError(MiscoreError):
    """Something the user gave us is wrong: a file, a folder, an argument."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration value is wrong; the message starts with the field path."""


class ComponentNotFoundError(InputError):
    """A component name is not registered by any installed plugin."""


class PluginError(MiscoreError):
    """A plugin failed to load, register or run; the message names the plugin."""


class PipelineError(MiscoreError):
    """A step of the pipeline failed at run time for a reason other than the input."""


class CacheError(PipelineError):
    """A cache entry is missing or damaged while a run reads it; the message names the entry
    (case id and location) and what to do."""
