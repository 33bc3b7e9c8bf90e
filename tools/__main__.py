"""``python -m tools`` (from a checkout) runs the ``logstore`` command; installed, it is ``python -m logstore``."""

import sys

from logstore.tools.cli import main

sys.exit(main())
