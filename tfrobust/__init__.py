"""tfrobust: adversarially robust Keras classifiers, trained in an ordinary ``model.fit``.

``import tfrobust`` registers every serialisable class (the :class:`~tfrobust.models.RobustModel`
wrapper and the objectives' terms) with Keras, so ``keras.models.load_model`` reads saved models
afterwards. The ``tfrobust`` command skips that import, so that ``tfrobust --help`` loads no
TensorFlow; its verbs import what they use (docs/architecture.md).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

__all__ = ["__version__"]

# While ``python -m tfrobust...`` locates its module, sys.argv[0] is "-m"; the console script's is "tfrobust".
if _os.path.basename(_sys.argv[0] if _sys.argv else "") not in ("tfrobust", "-m"):
    from tfrobust import models as _models  # noqa: F401  (registers RobustModel and, through it, the objectives)
