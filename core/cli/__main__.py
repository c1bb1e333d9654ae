"""``python -m torchslim.cli``."""

import sys

from . import main

sys.exit(main())
