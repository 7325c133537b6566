"""The analysis's user-facing error: one line naming the column, file or form and what was expected."""

from __future__ import annotations

from drorae_io import UserInputError


class AnalysisError(UserInputError, ValueError):
    """A mistake in what the user asked the analysis for (bad table, column, form); exit code 2."""
