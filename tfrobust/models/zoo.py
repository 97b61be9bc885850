"""A small zoo of classifiers that output logits: the paper's MNIST and CIFAR CNNs, WRN, linear."""

from __future__ import annotations

from typing import Callable

import keras

__all__ = [
    "mnist_cnn",
    "cifar_cnn",
    "linear_classifier",
    "ibp_cnn",
    "wide_resnet",
    "wrn_34_10",
    "build_classifier",
    "CLASSIFIERS",
]


def mnist_cnn(input_shape=(28, 28, 1), num_classes: int = 10, width: float = 1.0,
              name: str = "mnist_cnn") -> keras.Model:
    """The decision-surface paper's MNIST net: 2 conv + 2 dense layers (Madry et al.'s CNN).

    conv 5x5 (32w) - maxpool - conv 5x5 (64w) - maxpool - dense (1024w) - dense (logits).
    ``width`` scales every layer (``width=1`` is the paper's size).
    """
    w = lambda n: max(1, int(round(n * width)))  # noqa: E731
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(w(32), 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(w(64), 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(w(1024), activation="relu"),
        keras.layers.Dense(num_classes),
    ], name=name)


def cifar_cnn(input_shape=(32, 32, 3), num_classes: int = 10, width: float = 1.0,
              name: str = "cifar_cnn") -> keras.Model:
    """The decision-surface paper's CIFAR-10 net: 5 conv layers + global average pooling."""
    w = lambda n: max(1, int(round(n * width)))  # noqa: E731
    layers = [keras.Input(input_shape)]
    plan = ((64, 1), (128, 2), (128, 1), (256, 2), (num_classes, 1))
    for i, (filters, stride) in enumerate(plan):
        last = i == len(plan) - 1
        layers.append(keras.layers.Conv2D(filters if last else w(filters), 3, strides=stride,
                                          padding="same", activation=None if last else "relu"))
    layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers, name=name)


def wide_resnet(input_shape=(32, 32, 3), num_classes: int = 10, depth: int = 34, widen: int = 10,
                name: str | None = None) -> keras.Model:
    """Wide residual network WRN-depth-widen (Zagoruyko & Komodakis), pre-activation blocks.

    ``depth = 6 n + 4`` with ``n`` blocks per group; group widths 16k, 32k, 64k.
    WRN-34-10 is the EMR and TRADES papers' CIFAR-10 model.

    Raises:
        ValueError: if ``depth - 4`` is not a multiple of 6.
    """
    if (depth - 4) % 6:
        raise ValueError(f"depth={depth} must be 6n + 4")
    n = (depth - 4) // 6
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    for group, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
        for block in range(n):
            stride = 2 if group > 0 and block == 0 else 1
            pre = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
            shortcut = h
            if stride != 1 or h.shape[-1] != width:
                shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False)(pre)
            r = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(pre)
            r = keras.layers.ReLU()(keras.layers.BatchNormalization()(r))
            r = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(r)
            h = keras.layers.Add()([shortcut, r])
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(num_classes)(h)
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{widen}")


def wrn_34_10(input_shape=(32, 32, 3), num_classes: int = 10, name: str = "wrn_34_10") -> keras.Model:
    """WRN-34-10, the CIFAR-10 model of the EMR and TRADES papers (46M parameters)."""
    return wide_resnet(input_shape, num_classes, depth=34, widen=10, name=name)


IBP_CNN_PLANS = {
    "small": ([(16, 4, 2), (32, 4, 1)], [100]),
    "medium": ([(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], [512, 512]),
    "large": ([(64, 3, 1), (64, 3, 1), (128, 3, 2), (128, 3, 1), (128, 3, 1)], [512]),
}
"""Gowal et al.'s (2019) CNNs, ``(filters, kernel, stride)`` per conv and units per hidden dense layer."""


def ibp_cnn(input_shape=(28, 28, 1), num_classes: int = 10, size: str = "small",
            name: str | None = None) -> keras.Model:
    """The certified-training CNNs of Gowal et al. (2019), used by CROWN-IBP too: no pooling.

    ``small``: conv 16 4x4/2 - conv 32 4x4/1 - dense 100; ``medium``: four convs and two dense
    512; ``large``: five convs (64, 64, 128/2, 128, 128) and dense 512. ReLU after each, valid
    padding for ``small`` and same for the others, as in their code.

    Raises:
        ValueError: naming an unknown size.
    """
    if size not in IBP_CNN_PLANS:
        raise ValueError(f"size={size!r} is unknown; choose one of {sorted(IBP_CNN_PLANS)}")
    convs, dense = IBP_CNN_PLANS[size]
    padding = "valid" if size == "small" else "same"
    layers = [keras.Input(input_shape)]
    layers += [keras.layers.Conv2D(f, k, strides=s, padding=padding, activation="relu") for f, k, s in convs]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(u, activation="relu") for u in dense]
    layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(layers, name=name or f"ibp_cnn_{size}")


def linear_classifier(input_shape, num_classes: int = 10, name: str = "linear") -> keras.Model:
    """Softmax regression on flattened inputs: logits ``W x + b``."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes)], name=name)


CLASSIFIERS: dict[str, Callable[..., keras.Model]] = {
    "mnist_cnn": mnist_cnn, "cifar_cnn": cifar_cnn, "linear": linear_classifier, "ibp_cnn": ibp_cnn,
    "wide_resnet": wide_resnet, "wrn_34_10": wrn_34_10}
"""Classifier name -> builder, for configs."""


def build_classifier(name: str, input_shape, num_classes: int, **kwargs) -> keras.Model:
    """Builds a zoo classifier by name.

    Raises:
        ValueError: naming an unknown classifier.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"model {name!r} is unknown; choose one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
