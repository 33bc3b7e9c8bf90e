"""``python -m logstore`` runs the ``logstore`` command (the same as the console script)."""

import sys

from logstore.tools.cli import main

sys.exit(main())
