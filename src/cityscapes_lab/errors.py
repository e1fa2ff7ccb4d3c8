"""Errors a user can fix. Library code raises them; only the CLI turns them into a one-line message."""

from __future__ import annotations


class LabError(Exception):
    """A problem with the user's input, files or settings.

    The message is one line that names the file (or option) at fault and says how to fix it. The CLI prints it
    as ``error: <message>`` and exits with :attr:`exit_code`, without a traceback.
    """

    exit_code = 2


class DataError(LabError):
    """The raw download, a prepared folder or another data file is missing, malformed or inconsistent."""


class ConfigError(LabError):
    """An unknown configuration key, an invalid value, or options that contradict each other."""
