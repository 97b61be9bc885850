"""Old import path of :mod:`tfrobust.serving.export`, kept so that existing code keeps working."""

import sys

from tfrobust.serving import export as _module

sys.modules[__name__] = _module
