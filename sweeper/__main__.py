"""`python -m sweeper ...`: the `drorae` command line."""

import sys

from .cli import main

sys.exit(main())
