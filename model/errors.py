"""User-facing errors: one line that names the file, key or value and what was expected.

The CLI turns every ``UserError`` into that one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad config, missing file, missing asset)."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message to one line: it is printed as-is by the CLI.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError, ValueError):
    """A config value that cannot work, caught at construction before any work starts."""


class AssetError(UserError, FileNotFoundError):
    """A file the run needs (checkpoint, weights, dataset) is missing, with how to provide it."""
