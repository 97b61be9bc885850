"""tfrobust: adversarially robust Keras classifiers, trained in an ordinary ``model.fit``."""

__version__ = "0.1.0"

__all__ = ["__version__"]
