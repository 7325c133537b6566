"""What ``model``, ``analysis`` and ``sweeper`` share though neither of the first two may import the other.

- ``atomic_path`` (``drorae_io.files``): files written so that a reader never sees half of one, and
  only ever regular files: ``model`` (asset downloads, caches, checkpoints; ``model.assets.atomic_path``
  is this same function), ``analysis`` (figures, the report) and ``sweeper`` (the results table, the
  pending MLflow writes) write through it. ``check_output_dir`` / ``check_output_file`` check an output
  the user named (``--out``, ``--figures``, ``results_dir``) before anything is computed or written;
  ``made_dirs`` creates a directory and removes what it created when the run is refused.
- ``open_regular`` (``drorae_io.files``): the one way a command reads a file the user named (a results
  table; a spec, through ``read_regular_file``): regular files only (never a FIFO, a device or a
  directory), up to a size cap.
- ``check_endpoint`` (``drorae_io.endpoints``): an address the user gave (a tracking URI, a Ray
  address) parsed, and its server asked for an answer within a few seconds.
- ``UserInputError``: a mistake in what the user asked for, which every command prints as one line
  and exit code 2 (``analysis.cli.run_command``); ``model.errors.UserError`` and
  ``analysis.errors.AnalysisError`` are its kinds.

A leaf package, standard library only, so that each of the three can import it.
"""

from __future__ import annotations

from drorae_io.endpoints import check_endpoint, endpoint
from drorae_io.errors import UserInputError
from drorae_io.files import (
    atomic_path,
    check_output_dir,
    check_output_file,
    made_dirs,
    make_output_dir,
    open_regular,
    read_regular_file,
)

__all__ = ["UserInputError", "atomic_path", "check_endpoint", "check_output_dir", "check_output_file", "endpoint",
           "made_dirs", "make_output_dir", "open_regular", "read_regular_file"]
