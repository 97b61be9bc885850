"""Deployment: SavedModel export with a ``robustness`` signature, TF Serving's REST protocol, clients.

:mod:`.export` writes the versions TF Serving loads; :mod:`.server` serves them
locally with TF Serving's REST API; :mod:`.client` talks to either.
"""

__all__: list[str] = []
