"""`python -m analysis ...`: the analysis commands of `drorae` (fit, predict, backtest, figures, report)."""

import sys

from analysis.cli import main

sys.exit(main())
