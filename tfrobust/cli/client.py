"""The client's command line: score test images through a served model and print margin scores."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tfrobust.serving.client import GrpcClient, RestClient, RestError, format_scores, score_images

__all__ = ["main"]


def _dataset_for(shape: tuple[int, ...]) -> str:
    return {(28, 28, 1): "mnist", (8, 8, 1): "digits", (32, 32, 3): "cifar10"}.get(shape, "synthetic")


def _load_images(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    if args.npy:
        images = np.load(args.npy)[: args.n]
        labels = np.load(args.labels)[: args.n] if args.labels else None
        return images, labels
    from tfrobust import data

    name = args.dataset or _dataset_for(shape)
    try:
        if name == "synthetic":
            return data.load("synthetic", "test", args.n, shape=shape)
        return data.load(name, "test", args.n)
    except data.DatasetUnavailableError as err:
        print(f"{name} unavailable ({err}); scoring synthetic images instead", file=sys.stderr)
        return data.load("synthetic", "test", args.n, shape=shape)


def main(argv: list[str] | None = None) -> int:
    """``python -m tfrobust.serving.client``: score test images and print margin scores."""
    parser = argparse.ArgumentParser(prog="python -m tfrobust.serving.client", description=main.__doc__)
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
    args = parser.parse_args(argv)
    errors: tuple = (RestError, OSError, ValueError, KeyError, ImportError)
    try:
        if args.grpc:
            import grpc

            errors += (grpc.RpcError,)
            client = GrpcClient(args.grpc, args.model)
        else:
            client = RestClient(args.url, args.model)
        shape = None if args.npy else client.input_shape("robustness")
        images, labels = _load_images(args, shape)
        scores = score_images(client, images, smoothed=args.smoothed)
    except errors as err:
        print(f"tfrobust.serving.client: error: {err}", file=sys.stderr)
        return 2
    print(format_scores(scores, labels))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
