"""``python -m model fetch``: fill the cache with the offline assets (see model/assets.py).

The command line lives here, not in ``python -m model.assets``: importing the package already
imports model.assets (training uses its atomic writes), and running a module that is already
imported as ``__main__`` makes runpy warn and executes it a second time.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import assets
from .errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=assets.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch missing assets into the cache (idempotent)")
    p_fetch.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(assets.ASSETS)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        only = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else None
        assets.fetch(only)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
