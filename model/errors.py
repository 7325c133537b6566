"""User-facing errors: one line that names the file, key or value and what was expected.

The CLI turns every ``UserError`` (a ``drorae_io.UserInputError``) into that one line on stderr and
exit code 2, no traceback.
"""

from __future__ import annotations

from drorae_io import UserInputError


class UserError(UserInputError):
    """A mistake in what the user asked for (bad config, missing file, missing asset); exit code 2."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, caught at construction before any work starts."""


class AssetError(UserError, FileNotFoundError):
    """A file the run needs (checkpoint, weights, dataset) is missing, with how to provide it."""
