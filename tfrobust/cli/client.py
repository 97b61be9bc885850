"""``tfrobust client``: score test images through a served model and print margin scores.

Talks to TF Serving or ``tfrobust serve`` over REST (``--url``) or gRPC (``--grpc``) with the clients
of :mod:`tfrobust.serving.client`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tfrobust.cli import CliError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``client`` verb's options."""
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="REST address")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="use TF Serving's gRPC port instead")
    parser.add_argument("--model", default="tfrobust", help="model name")
    parser.add_argument("--n", type=int, default=10, help="how many test images")
    parser.add_argument("--dataset", help="dataset of tfrobust.data (default: by input shape)")
    parser.add_argument("--npy", help="images [N, H, W, C] in [0, 1] as .npy instead")
    parser.add_argument("--labels", help="labels [N] as .npy (with --npy)")
    parser.add_argument("--smoothed", action="store_true",
                        help="also show the smoothed signature (an export with --smoothing): its class and "
                             "certified L2 radius")


_DATASET_BY_SHAPE: dict[tuple[int, ...], str] = {(28, 28, 1): "mnist", (8, 8, 1): "digits", (32, 32, 3): "cifar10"}


def _dataset_for(shape: tuple[int, ...] | None) -> str:
    return "synthetic" if shape is None else _DATASET_BY_SHAPE.get(shape, "synthetic")


def _load_images(args: argparse.Namespace,
                 shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels)``: the ``--npy`` files, or the first ``--n`` test images of a dataset."""
    if args.npy:
        import numpy  # pylint: disable=import-outside-toplevel

        images = numpy.load(args.npy)[: args.n]
        labels = numpy.load(args.labels)[: args.n] if args.labels else None
        return images, labels
    from tfrobust import data  # pylint: disable=import-outside-toplevel

    name = args.dataset or _dataset_for(shape)
    try:
        if name == "synthetic":
            return data.load("synthetic", "test", args.n, shape=shape)
        return data.load(name, "test", args.n)
    except data.DatasetUnavailableError as err:
        print(f"{name} unavailable ({err}); scoring synthetic images instead", file=sys.stderr)
        return data.load("synthetic", "test", args.n, shape=shape)


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust client``: scores the images and prints one line per image.

    Raises:
        CliError: the server's error answer, a connection that failed, a signature the model lacks,
            or a missing ``tensorflow-serving-api`` for ``--grpc``.
    """
    from tfrobust.serving.client import (GrpcClient, RestClient, RestError,  # pylint: disable=import-outside-toplevel
                                         format_scores, score_images)

    if args.n < 1:
        raise ValueError(f"--n={args.n} must be >= 1")
    errors: tuple[type[BaseException], ...] = (RestError, OSError, KeyError, ImportError)
    client: GrpcClient | RestClient
    try:
        if args.grpc:
            import grpc  # pylint: disable=import-outside-toplevel

            errors += (grpc.RpcError,)
            client = GrpcClient(args.grpc, args.model)
        else:
            client = RestClient(args.url, args.model)
        shape = None if args.npy else client.input_shape("robustness")
        images, labels = _load_images(args, shape)
        scores = score_images(client, images, smoothed=args.smoothed)
    except errors as err:
        raise CliError(str(err)) from err
    print(format_scores(scores, labels))
    return 0
