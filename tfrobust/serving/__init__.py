"""Deployment: SavedModel export with a ``robustness`` signature, TF Serving's REST and gRPC APIs, clients.

- :mod:`.export`: atomic SavedModel versions that TF Serving loads;
- :mod:`.signatures`: what the exported signatures compute (``serving_default``, ``robustness``, ``smoothed``);
- :mod:`.calibration`: the split-conformal factor of the served ``estimated_radius``;
- :mod:`.versions`: TF Serving's version folders and the temporary folders of an atomic export;
- :mod:`.protocol`: TF Serving's REST request/response formats and error envelope;
- :mod:`.registry`: the served models, their versions and hot reload;
- :mod:`.batching`: concurrent requests sharing one model call;
- :mod:`.core`: what both front-ends share: model lookup, status, metadata, batched model calls;
- :mod:`.app`: the HTTP routes and OpenAPI description;
- :mod:`.grpc_api`: TF Serving's gRPC services (needs ``tensorflow-serving-api``);
- :mod:`.config` and :mod:`.server`: the settings and the running server;
- :mod:`.client`: REST and gRPC clients.
"""

__all__: list[str] = []
