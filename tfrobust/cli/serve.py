"""``tfrobust serve``: a local server speaking TF Serving's REST and gRPC APIs."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
from pathlib import Path


__all__ = ["add_arguments", "config_from_args", "run"]


def _parse_range(text: str) -> tuple[float, float] | None:
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-range {text!r} must be LOW,HIGH or none") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise argparse.ArgumentTypeError(f"--input-range {text!r} needs finite LOW <= HIGH")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` verb's options."""
    parser.add_argument("--model-base-path", metavar="BASE",
                        help="base path of the model to serve (folder of integer versions)")
    parser.add_argument("--model-name", default="tfrobust", metavar="NAME",
                        help="name of that model in URLs (default: tfrobust)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=BASE",
                        help="another model to serve; repeatable")
    parser.add_argument("--model-config-file", metavar="PATH",
                        help="a TF Serving models.config listing models to serve")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501; 0: any free)")
    grpc = parser.add_mutually_exclusive_group()
    grpc.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                      help="gRPC port (TF Serving's PredictionService and ModelService; default 8500 "
                           "when tensorflow-serving-api is installed; 0: any free)")
    grpc.add_argument("--no-grpc", action="store_true", help="serve REST only")
    parser.add_argument("--max-body-bytes", type=int, default=16 * 2**20,
                        help="largest request body accepted (default 16 MiB)")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often base paths are scanned for new versions (default 1)")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="run each request on its own instead of batching concurrent ones")
    parser.add_argument("--max-batch-size", type=int, default=256,
                        help="most rows in one batched model call (default 256)")
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0,
                        help="extra wait for a batch to fill (default 0: never wait)")
    parser.add_argument("--num-batch-threads", type=int, default=2,
                        help="model calls that may run at once (default 2)")
    parser.add_argument("--input-range", type=_parse_range, default=(0.0, 1.0), metavar="LOW,HIGH",
                        help="range float inputs must lie in (default 0,1; 'none' to accept any "
                             "finite value)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def _grpc_port(args: argparse.Namespace) -> int | None:
    """``--grpc-port`` (required to work), ``--no-grpc``, or 8500 if tensorflow-serving-api is there."""
    if args.no_grpc:
        return None
    installed = importlib.util.find_spec("tensorflow_serving") is not None
    if args.grpc_port is not None:
        if not installed:
            raise ValueError(f"--grpc-port {args.grpc_port} needs tensorflow-serving-api: pip install "
                             "'tfrobust[grpc]' (or serve REST only with --no-grpc)")
        return args.grpc_port
    if not installed:
        print("tfrobust serve: gRPC port off: tensorflow-serving-api is not installed "
              "(pip install 'tfrobust[grpc]')", file=sys.stderr)
        return None
    return 8500


def config_from_args(args: argparse.Namespace):
    """Builds the :class:`~tfrobust.serving.server.ServerConfig` of ``tfrobust serve``'s options."""
    from tfrobust.serving.server import (ServerConfig, parse_model_specs,  # pylint: disable=import-outside-toplevel
                                         read_model_config_file)

    models: dict[str, str] = {}
    if args.model_config_file:
        models.update(read_model_config_file(args.model_config_file))
    for name, base in parse_model_specs(args.model).items():
        if name in models:
            raise ValueError(f"model {name!r} is given twice")
        models[name] = base
    if args.model_base_path:
        if args.model_name in models:
            raise ValueError(f"model {args.model_name!r} is given twice")
        models[args.model_name] = args.model_base_path
    for name, base in models.items():
        if not Path(base).is_dir():
            raise FileNotFoundError(f"base path {base!r} of model {name!r} does not exist")
    return ServerConfig(
        models=models, host=args.host, port=args.port, grpc_port=_grpc_port(args),
        max_body_bytes=args.max_body_bytes,
        poll_seconds=args.poll_seconds, batching=args.batching,
        max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
        num_batch_threads=args.num_batch_threads, input_range=args.input_range)


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust serve`` until interrupted."""
    from tfrobust.serving.server import serve  # pylint: disable=import-outside-toplevel

    config = config_from_args(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(config, log_level=args.log_level)
    return 0
