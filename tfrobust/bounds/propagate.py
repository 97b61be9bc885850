"""Interval bound propagation and CROWN-IBP's backward linear bound over an L∞ ball in the clip box.

Both bound the specification ``C z`` on the logits z, where row j of ``C`` is ``e_y - e_j``: the
margins ``z_y - z_j`` that must stay positive for the prediction y to hold. As Gowal et al. (2019)
do, the specification is folded into the last affine layer before its interval is taken, which is
exact for that layer.

* :func:`interval_bounds` (IBP): boxes pushed forward, ``c' = W c + b``, ``r' = |W| r`` through
  affine maps and ``[f(l), f(u)]`` through monotone ones.
* :func:`margin_lower_bounds` with ``method="crown-ibp"`` (Zhang et al. 2020): the IBP boxes of
  every layer's input, then one linear pass backwards from ``C``: transposed affine maps (the
  vector-Jacobian product of the linear part) and, at an unstable ReLU (``l < 0 < u``), the upper
  chord ``u (h - l) / (u - l)`` and the lower line ``h`` if ``u > -l`` else 0. The backward pass
  stops at a node it cannot relax (max pooling, other activations) and takes that node's IBP box
  there. The result is the elementwise maximum of this bound and IBP's, both sound, so it is
  never looser than IBP.

Bounds are of the inference-mode network (batch norm with its moving statistics, dropout off), in
float32, or float64 when the inputs are float64.
"""

from __future__ import annotations

import tensorflow as tf

from tfrobust.bounds.graph import Graph, graph_of
from tfrobust.names import BOUND_METHODS
from tfrobust.utils import as_labels

__all__ = [
    "BOUND_METHODS",
    "input_box",
    "interval_bounds",
    "logit_bounds",
    "specification",
    "margin_lower_bounds",
    "mixed_margin_lower_bounds",
]


def input_box(x: tf.Tensor, eps, clip: tuple[float, float] | None) -> tuple[tf.Tensor, tf.Tensor]:
    """The L∞ ball of radius ``eps`` (a scalar or one per example) around ``x``, cut to ``clip``."""
    x = tf.convert_to_tensor(x)
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    x = tf.cast(x, dtype)
    eps = tf.cast(eps, dtype) if isinstance(eps, (tf.Tensor, tf.Variable)) else tf.constant(eps, dtype)
    if eps.shape.rank:
        eps = tf.reshape(eps, tf.concat([tf.shape(eps), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
    lower, upper = x - eps, x + eps
    if clip is not None:
        lower = tf.maximum(lower, tf.constant(clip[0], dtype))
        upper = tf.minimum(upper, tf.constant(clip[1], dtype))
    return lower, upper


def interval_bounds(graph: Graph, lower: tf.Tensor, upper: tf.Tensor) -> dict[int, tuple[tf.Tensor, tf.Tensor]]:
    """IBP: the box of every tensor of ``graph`` (by id) for inputs in ``[lower, upper]``."""
    boxes = {graph.input: (lower, upper)}
    for node in graph.nodes:
        ins = [boxes[i] for i in node.inputs]
        if node.kind == "affine":
            assert node.abs_linear is not None, f"affine node {node.name} has no abs_linear"
            lo, hi = ins[0]
            center, radius = node.apply((lo + hi) / 2), node.abs_linear((hi - lo) / 2)
            boxes[node.output] = (center - radius, center + radius)
        elif node.kind == "monotone":
            boxes[node.output] = (node.apply(ins[0][0]), node.apply(ins[0][1]))
        else:
            boxes[node.output] = (tf.add_n([b[0] for b in ins]), tf.add_n([b[1] for b in ins]))
    return boxes


def logit_bounds(model, x, eps, *, clip: tuple[float, float] | None = (0.0, 1.0)) -> tuple[tf.Tensor, tf.Tensor]:
    """IBP lower and upper bounds on every logit of ``model`` over the ball around ``x``.

    Args:
        model: a Sequential or functional classifier (a ``RobustModel``'s ``classifier``).
        x: inputs, a batch.
        eps: the L∞ radius, a scalar or one per example.
        clip: the valid input range, intersected with the ball; ``None``: no range.

    Returns:
        ``(lower, upper)``, each ``(batch, classes)``.
    """
    graph = graph_of(model)
    lower, upper = input_box(x, eps, clip)
    return interval_bounds(graph, lower, upper)[graph.output]


def specification(y: tf.Tensor, num_classes: int, dtype=tf.float32) -> tf.Tensor:
    """``C`` of shape ``(batch, classes, classes)``: row j is ``e_y - e_j`` (zero for j = y)."""
    onehot = tf.one_hot(y, num_classes, dtype=dtype)
    return onehot[:, None, :] - tf.eye(num_classes, dtype=dtype)[None]


def _vjp(fn, cotangent: tf.Tensor, input_shape: tf.Tensor) -> tf.Tensor:
    """``cotangent · ∂fn`` for a linear ``fn`` (its transpose applied), any leading batch."""
    h = tf.zeros(input_shape, cotangent.dtype)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = fn(h)
    return tape.gradient(out, h, output_gradients=cotangent)


def _concretize(lam: tf.Tensor, lower: tf.Tensor, upper: tf.Tensor) -> tf.Tensor:
    """``min over h in [lower, upper] of lam · h``, per (example, row): lam is ``(B, K, *shape)``."""
    axes = list(range(2, len(lam.shape)))
    pos, neg = tf.nn.relu(lam), -tf.nn.relu(-lam)
    return tf.reduce_sum(pos * lower[:, None] + neg * upper[:, None], axis=axes)


def _sum_features(t: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(t, axis=list(range(2, len(t.shape))))


def _relu_relaxation(lower: tf.Tensor, upper: tf.Tensor):
    """CROWN's lines ``a_l h <= relu(h) <= a_u h + b_u`` on ``[lower, upper]`` (``b_l = 0``)."""
    unstable = tf.logical_and(lower < 0, upper > 0)
    gap = tf.where(unstable, upper - lower, tf.ones_like(upper))
    slope_u = tf.where(unstable, upper / gap, tf.cast(lower >= 0, upper.dtype))
    intercept_u = tf.where(unstable, -lower * upper / gap, tf.zeros_like(upper))
    slope_l = tf.where(unstable, tf.cast(upper > -lower, upper.dtype), tf.cast(lower >= 0, upper.dtype))
    return slope_l, slope_u, intercept_u


def _backward(graph: Graph, boxes: dict, spec: tf.Tensor, max_nodes: int | None) -> tf.Tensor:
    """Lower bound on ``spec · logits`` by a linear pass from the output back to the input.

    The pass goes through at most ``max_nodes`` nodes (``None``: all it can relax); at any
    other node the running linear function is bounded on that node's IBP box.
    """
    lams = {graph.output: spec}
    const = tf.zeros(tf.shape(spec)[:2], spec.dtype)
    visited = 0
    for node in reversed(graph.nodes):
        lam = lams.pop(node.output, None)
        if lam is None:
            continue
        relaxable = node.kind in ("affine", "add") or node.relu
        if not relaxable or (max_nodes is not None and visited >= max_nodes):
            const += _concretize(lam, *boxes[node.output])
            continue
        visited += 1
        if node.kind == "add":
            for src in node.inputs:
                lams[src] = lams[src] + lam if src in lams else lam
            continue
        src = node.inputs[0]
        lower, upper = boxes[src]
        if node.kind == "affine":
            zero = tf.zeros(tf.concat([[1], tf.shape(lower)[1:]], 0), lam.dtype)
            const += _sum_features(lam * node.apply(zero)[:, None])
            batch, rows = tf.shape(lam)[0], tf.shape(lam)[1]
            flat = tf.reshape(lam, tf.concat([[batch * rows], tf.shape(lam)[2:]], 0))
            back = _vjp(node.linear, flat, tf.concat([[batch * rows], tf.shape(lower)[1:]], 0))
            new = tf.reshape(back, tf.concat([[batch, rows], tf.shape(lower)[1:]], 0))
        else:
            slope_l, slope_u, intercept_u = (t[:, None] for t in _relu_relaxation(lower, upper))
            pos, neg = tf.nn.relu(lam), -tf.nn.relu(-lam)
            const += _sum_features(neg * intercept_u)
            new = pos * slope_l + neg * slope_u
        lams[src] = lams[src] + new if src in lams else new
    for src, lam in lams.items():
        const += _concretize(lam, *boxes[src])
    return const


def _prepare(model, x, y, eps, clip):
    graph = graph_of(model)
    lower, upper = input_box(x, eps, clip)
    boxes = interval_bounds(graph, lower, upper)
    num_classes = boxes[graph.output][0].shape[-1]
    labels = as_labels(y, num_examples=x.shape[0])
    return graph, boxes, specification(labels, num_classes, lower.dtype)


def mixed_margin_lower_bounds(model, x, y, eps, *, beta, clip: tuple[float, float] | None = (0.0, 1.0)
                              ) -> tf.Tensor:
    """CROWN-IBP's training bound: ``beta * CROWN-IBP + (1 - beta) * IBP``, both on ``z_y - z_j``.

    ``beta`` may be a tensor; where it is 0 (after CROWN-IBP's ramp) the backward pass is skipped.
    """
    graph, boxes, spec = _prepare(model, x, y, eps, clip)
    ibp = _backward(graph, boxes, spec, max_nodes=1)
    beta = tf.cast(beta, ibp.dtype)
    return tf.cond(beta > 0, lambda: beta * _backward(graph, boxes, spec, None) + (1 - beta) * ibp,
                   lambda: ibp)


def margin_lower_bounds(model, x, y, eps, *, method: str = "ibp",
                        clip: tuple[float, float] | None = (0.0, 1.0)) -> tf.Tensor:
    """Per example and class j, a proven lower bound on ``z_y - z_j`` over the ball (0 at j = y).

    The label y is verified at ``eps`` when every entry but y's is positive.

    Args:
        model: a Sequential or functional classifier that outputs logits.
        x: inputs.
        y: the labels (or predicted classes) to verify.
        eps: the L∞ radius, a scalar or one per example.
        method: ``"ibp"`` or ``"crown-ibp"`` (the tighter of CROWN-IBP and IBP).
        clip: the valid input range; ``None``: none.

    Raises:
        ValueError: naming an unknown method or a layer that bounds cannot pass.
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {list(BOUND_METHODS)}")
    graph, boxes, spec = _prepare(model, x, y, eps, clip)
    ibp = _backward(graph, boxes, spec, max_nodes=1)
    if method == "ibp":
        return ibp
    return tf.maximum(ibp, _backward(graph, boxes, spec, None))
