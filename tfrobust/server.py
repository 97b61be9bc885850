"""Old import path of :mod:`tfrobust.serving.server`, kept so that existing code keeps working."""

import sys

from tfrobust.serving import server as _module

sys.modules[__name__] = _module
