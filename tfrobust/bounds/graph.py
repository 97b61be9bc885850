"""A Keras classifier as a list of bound-propagation nodes: affine maps, monotone maps and sums.

Bound propagation needs three things of each layer: whether it is affine (then its linear part,
the same map on absolute weights, and its offset), monotone non-decreasing in every input (then
applying it to a lower and an upper bound bounds its output), or a sum of its inputs. A Dense or
convolution with an activation becomes two nodes. Every map is written with TensorFlow ops in the
dtype of the bounds (float32, or float64 for reference checks), never by calling the Keras layer,
which would cast to its compute dtype (float16 under mixed precision).

Supported: Dense, Conv1D/2D/3D (``channels_last``, one group), BatchNormalization (inference
statistics), AveragePooling, GlobalAveragePooling, MaxPooling, GlobalMaxPooling, Flatten,
Reshape, Dropout and the other noise layers (identity in inference), ReLU, LeakyReLU,
Activation and every layer's ``activation`` when it is monotone, Add, and Sequential or
functional models (nested Sequential too). Anything else is refused by name.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import keras
import tensorflow as tf

__all__ = ["Node", "Graph", "graph_of", "MONOTONE_ACTIVATIONS"]

MONOTONE_ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "sigmoid", "hard_sigmoid", "tanh", "hard_tanh",
    "softplus", "softsign", "exponential", "linear"})
"""Activations (by Keras' serialised name) that are non-decreasing, so intervals pass through them."""

_IDENTITY = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
             keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
             keras.layers.AlphaDropout, keras.layers.ActivityRegularization, keras.layers.Identity)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_AVG_POOL = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
_MAX_POOL = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
_GLOBAL_AVG = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
               keras.layers.GlobalAveragePooling3D)
_GLOBAL_MAX = (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
               keras.layers.GlobalMaxPooling3D)


@dataclasses.dataclass(frozen=True)
class Node:
    """One step of the network for bound propagation.

    Attributes:
        kind: ``"affine"`` (``apply(h) = linear(h) + offset``), ``"monotone"`` (``apply`` is
            non-decreasing in every input) or ``"add"`` (the sum of the inputs).
        name: the Keras layer it comes from, for messages.
        inputs: ids of the tensors it reads.
        output: id of the tensor it writes.
        apply: the map, on tensors of the bounds' dtype.
        linear: affine nodes: the map without its offset.
        abs_linear: affine nodes: the linear map with every weight replaced by its absolute
            value, so ``abs_linear(r)`` is the radius of the image of a box of radius ``r``.
        relu: monotone nodes: the map is the elementwise ReLU (CROWN relaxes it linearly).
    """

    kind: str
    name: str
    inputs: tuple[int, ...]
    output: int
    apply: Callable[..., tf.Tensor]
    linear: Callable[[tf.Tensor], tf.Tensor] | None = None
    abs_linear: Callable[[tf.Tensor], tf.Tensor] | None = None
    relu: bool = False


@dataclasses.dataclass(frozen=True)
class Graph:
    """A classifier's nodes in topological order, with the ids of its input and its logits."""

    nodes: tuple[Node, ...]
    input: int
    output: int


def graph_of(model: keras.Model) -> Graph:
    """The bound-propagation graph of a Sequential or functional Keras classifier.

    Raises:
        ValueError: naming the first layer (and its class) that bounds cannot pass, or the model
            if it is subclassed, has several inputs or outputs, or calls a layer twice.
    """
    ids = itertools.count()
    nodes: list[Node] = []
    source = next(ids)
    out = _add_model(model, source, nodes, ids)
    return Graph(tuple(nodes), source, out)


def _add_model(model, source: int, nodes: list, ids) -> int:
    if isinstance(model, keras.Sequential):
        h = source
        for layer in model.layers:
            h = _add_layer(layer, (h,), nodes, ids)
        return h
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs:
        raise ValueError(f"model {model.name!r} ({type(model).__name__}) is subclassed; bounds need a "
                         "Sequential or functional Keras model")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "bounds need one of each")
    tensor_ids = {id(inputs[0]): source}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            raise ValueError(f"layer {layer.name!r} is a model nested in the functional model "
                             f"{model.name!r}; bounds take nested models only inside a Sequential")
        try:
            layer_inputs = layer.input
        except (AttributeError, ValueError) as err:
            raise ValueError(f"layer {layer.name!r} is called more than once in {model.name!r}; "
                             "bounds need each layer called once") from err
        layer_inputs = layer_inputs if isinstance(layer_inputs, (list, tuple)) else [layer_inputs]
        tensor_ids[id(layer.output)] = _add_layer(
            layer, tuple(tensor_ids[id(t)] for t in layer_inputs), nodes, ids)
    return tensor_ids[id(outputs[0])]


def _add_layer(layer, inputs: tuple[int, ...], nodes: list, ids) -> int:
    if isinstance(layer, keras.Model):
        if len(inputs) != 1:
            raise ValueError(f"nested model {layer.name!r} must take one input")
        return _add_model(layer, inputs[0], nodes, ids)
    if isinstance(layer, keras.layers.Add):
        out = next(ids)
        nodes.append(Node("add", layer.name, inputs, out, lambda *hs: tf.add_n(list(hs))))
        return out
    if len(inputs) != 1:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) with several inputs is not "
                         "supported by bound propagation (Add is)")
    h = inputs[0]
    for node_fn in _layer_nodes(layer):
        out = next(ids)
        nodes.append(node_fn(h, out))
        h = out
    return h


def _layer_nodes(layer) -> list[Callable[[int, int], Node]]:
    """Node builders (input id, output id) -> Node for one layer, in order."""
    name = layer.name
    if isinstance(layer, keras.layers.Dense):
        return [_affine(name, *_dense_maps(layer))] + _activation(layer)
    if isinstance(layer, _CONV):
        return [_affine(name, *_conv_maps(layer))] + _activation(layer)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [_affine(name, *_batch_norm_maps(layer))]
    if isinstance(layer, _AVG_POOL):
        pool = _pool_fn(layer, "AVG")
        return [_affine(name, pool, pool, None)]
    if isinstance(layer, _GLOBAL_AVG):
        mean = _global_fn(layer, tf.reduce_mean)
        return [_affine(name, mean, mean, None)]
    if isinstance(layer, _MAX_POOL):
        return [_monotone(name, _pool_fn(layer, "MAX"))]
    if isinstance(layer, _GLOBAL_MAX):
        return [_monotone(name, _global_fn(layer, tf.reduce_max))]
    if isinstance(layer, keras.layers.Flatten):
        _check_channels_last(layer)
        flat = lambda h: tf.reshape(h, [tf.shape(h)[0], -1])  # noqa: E731
        return [_affine(name, flat, flat, None)]
    if isinstance(layer, keras.layers.Reshape):
        shape = [int(s) for s in layer.target_shape]
        reshape = lambda h: tf.reshape(h, [tf.shape(h)[0]] + shape)  # noqa: E731
        return [_affine(name, reshape, reshape, None)]
    if isinstance(layer, _IDENTITY):
        return []
    if isinstance(layer, keras.layers.ReLU):
        return [_relu_layer(layer)]
    if isinstance(layer, keras.layers.LeakyReLU):
        slope = float(layer.negative_slope)
        if slope < 0:
            raise ValueError(f"layer {name!r}: LeakyReLU(negative_slope={slope}) is not monotone")
        return [_monotone(name, lambda h: tf.where(h >= 0, h, slope * h))]
    if isinstance(layer, keras.layers.Activation):
        return _activation(layer)
    raise ValueError(f"layer {name!r} ({type(layer).__name__}) is not supported by bound propagation; "
                     "supported: Dense, Conv1D/2D/3D, BatchNormalization, average and max pooling, "
                     "Flatten, Reshape, Dropout, ReLU, LeakyReLU, monotone activations, Add")


def _affine(name, linear, abs_linear, offset):
    def build(src: int, out: int) -> Node:
        apply = linear if offset is None else (lambda h: linear(h) + offset(h.dtype))
        return Node("affine", name, (src,), out, apply, linear, abs_linear)
    return build


def _monotone(name, fn, relu: bool = False):
    def build(src: int, out: int) -> Node:
        return Node("monotone", name, (src,), out, fn, relu=relu)
    return build


def _activation(layer) -> list:
    act = getattr(layer, "activation", None)
    if act is None:
        return []
    act_name = keras.activations.serialize(act)
    act_name = act_name if isinstance(act_name, str) else str(act_name)
    if act_name == "linear":
        return []
    if act_name not in MONOTONE_ACTIVATIONS:
        raise ValueError(f"layer {layer.name!r}: activation {act_name!r} is not monotone, so bound "
                         f"propagation refuses it; monotone ones: {sorted(MONOTONE_ACTIVATIONS)}")
    if act_name == "relu":
        return [_monotone(f"{layer.name}/relu", tf.nn.relu, relu=True)]
    return [_monotone(f"{layer.name}/{act_name}", act)]


def _relu_layer(layer):
    max_value, slope, threshold = layer.max_value, float(layer.negative_slope), float(layer.threshold)
    if max_value is None and slope == 0.0 and threshold == 0.0:
        return _monotone(layer.name, tf.nn.relu, relu=True)
    if slope < 0:
        raise ValueError(f"layer {layer.name!r}: ReLU(negative_slope={slope}) is not monotone")

    def fn(h):
        out = tf.where(h >= threshold, h, slope * (h - threshold))
        return out if max_value is None else tf.minimum(out, tf.cast(max_value, h.dtype))
    return _monotone(layer.name, fn)


def _cast(variable, dtype):
    return tf.cast(tf.convert_to_tensor(variable), dtype)


def _dense_maps(layer):
    def linear(h, absolute=False):
        kernel = _cast(layer.kernel, h.dtype)
        return tf.tensordot(h, tf.abs(kernel) if absolute else kernel, axes=1)
    offset = None if layer.bias is None else (lambda dtype: _cast(layer.bias, dtype))
    return linear, (lambda h: linear(h, absolute=True)), offset


def _check_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") not in (None, "channels_last"):
        raise ValueError(f"layer {layer.name!r}: data_format={layer.data_format!r} is not supported by "
                         "bound propagation (channels_last is)")


def _conv_maps(layer):
    _check_channels_last(layer)
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(f"layer {layer.name!r}: groups={layer.groups} is not supported by bound propagation")
    padding = layer.padding.upper()
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"layer {layer.name!r}: padding={layer.padding!r} is not supported by bound propagation")

    def linear(h, absolute=False):
        kernel = _cast(layer.kernel, h.dtype)
        return tf.nn.convolution(h, tf.abs(kernel) if absolute else kernel, strides=list(layer.strides),
                                 padding=padding, dilations=list(layer.dilation_rate))
    offset = None if layer.bias is None else (lambda dtype: _cast(layer.bias, dtype))
    return linear, (lambda h: linear(h, absolute=True)), offset


def _batch_norm_maps(layer):
    axis = int(layer.axis) if not isinstance(layer.axis, (list, tuple)) else None

    def check(h):
        if axis is None or axis not in (-1, len(h.shape) - 1):
            raise ValueError(f"layer {layer.name!r}: BatchNormalization(axis={layer.axis}) is not supported "
                             "by bound propagation (the last axis is)")
        return h

    def scale(dtype):
        s = tf.math.rsqrt(_cast(layer.moving_variance, dtype) + tf.cast(layer.epsilon, dtype))
        return s * _cast(layer.gamma, dtype) if layer.scale else s

    def offset(dtype):
        shift = -_cast(layer.moving_mean, dtype) * scale(dtype)
        return shift + _cast(layer.beta, dtype) if layer.center else shift
    return (lambda h: check(h) * scale(h.dtype)), (lambda h: check(h) * tf.abs(scale(h.dtype))), offset


def _pool_fn(layer, kind: str):
    _check_channels_last(layer)
    window, strides = list(layer.pool_size), list(layer.strides)
    padding = layer.padding.upper()
    return lambda h: tf.nn.pool(h, window, kind, strides=strides, padding=padding)


def _global_fn(layer, reduce: Callable):
    _check_channels_last(layer)
    keepdims = bool(getattr(layer, "keepdims", False))
    return lambda h: reduce(h, axis=list(range(1, len(h.shape) - 1)), keepdims=keepdims)

