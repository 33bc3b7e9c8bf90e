"""``python -m tools`` runs the ``logstore`` command."""

import sys

from tools.cli import main

sys.exit(main())
