"""Old import path of :mod:`tfrobust.serving.client`, kept so that existing code keeps working."""

import sys

from tfrobust.serving import client as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
