"""``python -m tfrobust``."""

import sys

from tfrobust.cli import main

sys.exit(main())
