"""The analysis's user-facing error: one line naming the column, file or form and what was expected."""

from __future__ import annotations


class AnalysisError(ValueError):
    """A mistake in what the user asked the analysis for (bad table, column, form); exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        # One line: a CLI prints it as-is, without a traceback.
        super().__init__(" ".join(str(message).split()))
