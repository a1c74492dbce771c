"""``python -m resprune ...``: the same command line as ``resprune ...``."""

import sys

from .cli.main import main

sys.exit(main())
