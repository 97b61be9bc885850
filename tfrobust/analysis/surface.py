"""Decision and loss surfaces on a 2-D plane, in input space and in parameter space.

Input space (Yu et al., docs/architecture.md): around an input ``x`` with label ``y``
the grid ``x + a·u + b·v`` is evaluated for the decision function
``d = z_y - max_{i≠y} z_i`` and the cross-entropy. ``u`` and ``v`` are random
or ``u`` is an attack direction: the steepest-ascent direction of the
untargeted cross-entropy (``"ce"``), the steepest-descent direction of the
cross-entropy towards the least-likely class (``"ll"``) or the steepest-ascent
direction of the C&W margin ``-d`` (``"cw"``). Under the L∞ norm a direction
is a sign vector (``||u||_∞ = 1``), so ``a`` is measured in the units of the
threat ``eps``; under L2 both are unit vectors and ``v ⟂ u``. The eps-ball's
section by the plane is the region where ``||a·u + b·v|| <= eps``, stored as
:attr:`Surface.ball`. An attack trajectory (BIM steps along the same loss)
is projected onto the plane.

Parameter space (Li et al. 2017): the weights ``θ + a·δ₁ + b·δ₂`` with
filter-normalised random directions ``δ``, the loss and mean decision function
averaged over a batch of inputs.

Grids are evaluated in batches: one forward pass per batch of grid points.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import tensorflow as tf

from tfrobust import attacks, losses, norms
from tfrobust import utils
from tfrobust.models import unwrap
from tfrobust.attacks import resolve_labels

__all__ = [
    "SPACES",
    "DIRECTIONS",
    "Surface",
    "input_directions",
    "evaluate_plane",
    "attack_trajectory",
    "project_onto_plane",
    "input_surface",
    "filter_normalized_directions",
    "evaluate_parameter_plane",
    "parameter_surface",
]

SPACES = ("input", "parameter")
"""Spaces a surface can live in."""

DIRECTIONS = ("random", "ce", "ll", "cw")
"""Kinds of the first direction ``u`` in input space."""


@dataclasses.dataclass
class Surface:
    """A surface evaluated on a grid.

    Grid arrays are indexed ``[j, i]`` for ``(a, b) = (alphas[i], betas[j])``
    (the ``meshgrid`` / ``contour`` convention).

    Attributes:
        alphas: coordinates along ``u`` ``[A]``.
        betas: coordinates along ``v`` ``[B]``.
        decision: decision function ``d`` (mean over inputs in parameter space) ``[B, A]``.
        loss: cross-entropy (mean over inputs in parameter space) ``[B, A]``.
        space: ``"input"`` or ``"parameter"``.
        direction: kind of ``u``.
        norm: normalisation of the directions (``"linf"``, ``"l2"``; ``"filter"`` in parameter space).
        label: the label ``y`` (input space) or ``None``.
        eps: threat radius marked on plots, or ``None``.
        ball: ``||a·u + b·v||`` in the threat norm ``[B, A]`` (input space), or ``None``.
        trajectory: attack iterates projected onto the plane ``[T + 1, 2]``, or ``None``.
        trajectory_offplane: share of each iterate's offset that lies off the plane ``[T + 1]``.
        trajectory_decision: ``d`` at each (true, unprojected) iterate ``[T + 1]``.
        accuracy: share of inputs classified correctly ``[B, A]`` (parameter space), or ``None``.
        meta: free-form description (model, dataset, index, ...).
    """

    alphas: np.ndarray
    betas: np.ndarray
    decision: np.ndarray
    loss: np.ndarray
    space: str = "input"
    direction: str = "random"
    norm: str = "linf"
    label: int | None = None
    eps: float | None = None
    ball: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    trajectory_offplane: np.ndarray | None = None
    trajectory_decision: np.ndarray | None = None
    accuracy: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def value_at(self, a: float, b: float, kind: str = "decision") -> float:
        """The grid value nearest to ``(a, b)``."""
        grid = getattr(self, kind)
        i = int(np.argmin(np.abs(self.alphas - a)))
        j = int(np.argmin(np.abs(self.betas - b)))
        return float(grid[j, i])

    def to_dict(self) -> dict:
        """JSON-friendly dict (arrays as nested lists)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def to_json(self, path) -> None:
        """Writes :meth:`to_dict` to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def from_dict(cls, data: dict) -> "Surface":
        """Inverse of :meth:`to_dict`."""
        arrays = {"alphas", "betas", "decision", "loss", "ball", "trajectory", "trajectory_offplane",
                  "trajectory_decision", "accuracy"}
        kwargs: dict[str, Any] = {k: (np.asarray(v, dtype=np.float64) if k in arrays and v is not None else v)
                  for k, v in data.items()}
        return cls(**kwargs)


# -- input space -----------------------------------------------------------------


def _random_direction(shape, norm: str, seed: int, dtype) -> tf.Tensor:
    g = tf.random.stateless_normal(shape, seed=[seed, 7], dtype=dtype)
    return norms.steepest_step(g, norm)


def input_directions(model, x, y=None, direction: str = "random", *, norm: str = "linf",
                     seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """The plane ``(u, v)`` around a single input.

    Args:
        model: classifier returning logits.
        x: one input ``[1, ...]``.
        y: its label (``None``: the prediction).
        direction: ``"random"``, ``"ce"`` (ascent of CE at ``y``), ``"ll"``
            (descent of CE towards the least-likely class) or ``"cw"`` (ascent of ``-d``).
        norm: ``"linf"`` (sign vectors) or ``"l2"`` (unit vectors, ``v ⟂ u``).
        seed: seed of the random directions.

    Returns:
        ``(u, v)``, each shaped like ``x``.

    Raises:
        ValueError: naming a bad ``direction`` or ``norm``.
    """
    utils.check_choice("direction", direction, DIRECTIONS)
    norms.validate_norm(norm)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    y = resolve_labels(model, x, y, targeted=False)
    if direction == "random":
        u = _random_direction(tf.shape(x), norm, seed, x.dtype)
    else:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            if direction == "ce":
                objective = losses.cross_entropy(logits, y)
            elif direction == "ll":
                objective = -losses.cross_entropy(logits, losses.least_likely(tf.stop_gradient(logits)))
            else:
                objective = losses.cw_loss(logits, y)
        u = norms.steepest_step(tape.gradient(objective, x), norm)
    v = _random_direction(tf.shape(x), norm, seed + 1, x.dtype)
    if norm == "l2":
        flat_u = tf.reshape(u, [-1])
        v = v - tf.reduce_sum(flat_u * tf.reshape(v, [-1])) * u
        v = norms.steepest_step(v, "l2")
    return u, v


def _grid(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
    aa, bb = np.meshgrid(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))
    return aa.reshape(-1), bb.reshape(-1)


def evaluate_plane(model, x, y, u, v, alphas, betas, *, clip: tuple[float, float] | None = (0.0, 1.0),
                   batch_size: int = 1024, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``d`` and cross-entropy at ``clip(x + a·u + b·v)`` on the grid ``alphas x betas``.

    One forward pass per batch of ``batch_size`` grid points.

    Args:
        model: classifier returning logits.
        x: one input ``[1, ...]``.
        y: its integer label (scalar or ``[1]``).
        u: first direction, shaped like ``x``.
        v: second direction, shaped like ``x``.
        alphas: coordinates along ``u``.
        betas: coordinates along ``v``.
        clip: valid input range, or ``None`` to evaluate outside it too.
        batch_size: grid points per forward pass.
        progress: show a progress bar.

    Returns:
        ``(decision, loss)``, each ``[len(betas), len(alphas)]``.
    """
    batch_size = utils.check_positive_int("batch_size", batch_size)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    label = tf.cast(tf.reshape(y, [-1])[:1], tf.int32)
    aa, bb = _grid(alphas, betas)
    lo_hi = None if clip is None else (float(clip[0]), float(clip[1]))
    u = tf.cast(u, x.dtype)
    v = tf.cast(v, x.dtype)
    dec, ce = [], []
    for s in utils.progress(list(utils.batches(aa.size, batch_size)), enabled=progress, desc="surface"):
        d, loss = _plane_values(model, x, label, u, v, tf.constant(aa[s], x.dtype),
                             tf.constant(bb[s], x.dtype), lo_hi)
        dec.append(d.numpy())
        ce.append(loss.numpy())
    shape = (len(betas), len(alphas))
    return np.concatenate(dec).reshape(shape), np.concatenate(ce).reshape(shape)


@tf.function(reduce_retracing=True)
def _plane_values(model, x, label, u, v, a, b, clip):
    """``d`` and CE at ``x + a·u + b·v`` for a batch of coefficients ``a, b`` (one forward pass)."""
    shape = tf.concat([tf.shape(a), tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    points = x + tf.reshape(a, shape) * u + tf.reshape(b, shape) * v
    if clip is not None:
        points = tf.clip_by_value(points, tf.cast(clip[0], x.dtype), tf.cast(clip[1], x.dtype))
    logits = model(points, training=False)
    labels = tf.fill(tf.shape(a), label[0])
    return losses.decision_margin(logits, labels), losses.cross_entropy(logits, labels)


def attack_trajectory(model, x, y, *, attack: str = "ce", eps: float = 0.3, steps: int = 10,
                      step_size: float | None = None, norm: str = "linf",
                      clip: tuple[float, float] | None = (0.0, 1.0)) -> tf.Tensor:
    """Every iterate of a BIM attack (no random start), ``[steps + 1, ...]`` starting at ``x``.

    Each step is one :func:`tfrobust.attacks.pgd` step of size ``step_size``
    from the current iterate, projected back onto the ``eps`` ball around ``x``:
    exactly the iterates of :func:`tfrobust.attacks.bim`.

    Args:
        model: classifier returning logits.
        x: one input ``[1, ...]``.
        y: its label.
        attack: ``"ce"`` (untargeted CE), ``"ll"`` (CE targeted at the
            least-likely class) or ``"cw"`` (margin); ``"random"`` means ``"ce"``.
        eps: radius of the threat ball.
        steps: number of steps.
        step_size: step size; default ``2.5 * eps / steps``.
        norm: threat norm.
        clip: valid input range.
    """
    utils.check_choice("attack", attack, DIRECTIONS)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    y = resolve_labels(model, x, y, targeted=False)
    step_size = 2.5 * eps / max(int(steps), 1) if step_size is None else step_size
    targeted = attack == "ll"
    target = losses.least_likely(model(x, training=False)) if targeted else y
    loss = "cw" if attack == "cw" else "ce"
    points = [x]
    current = x
    for _ in range(int(steps)):
        moved = attacks.pgd(model, current, target, eps=step_size, steps=1, step_size=step_size, norm=norm,
                            random_start=False, clip=clip, loss=loss, targeted=targeted)
        current = x + norms.project(moved - x, eps, norm)
        if clip is not None:
            current = tf.clip_by_value(current, clip[0], clip[1])
        points.append(current)
    return tf.concat(points, axis=0)


def project_onto_plane(offsets: tf.Tensor, u: tf.Tensor, v: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coordinates ``(a, b)`` of each offset in the plane of ``u, v``.

    Returns:
        ``(coords [T, 2], offplane [T])``: the share ``||δ - a·u - b·v|| / ||δ||``
        of each offset that lies off the plane (0 for a zero offset).
    """
    flat = tf.reshape(tf.cast(offsets, tf.float64), [tf.shape(offsets)[0], -1]).numpy()
    basis = np.stack([tf.reshape(tf.cast(u, tf.float64), [-1]).numpy(),
                      tf.reshape(tf.cast(v, tf.float64), [-1]).numpy()], axis=1)
    coords, *_ = np.linalg.lstsq(basis, flat.T, rcond=None)
    residual = flat - (basis @ coords).T
    size = np.linalg.norm(flat, axis=1)
    offplane = np.where(size > 0, np.linalg.norm(residual, axis=1) / np.maximum(size, 1e-300), 0.0)
    return coords.T, offplane


def _ball(u, v, aa, bb, norm: str) -> np.ndarray:
    """``||a·u + b·v||`` at every grid point (in batches, to bound memory)."""
    u = tf.reshape(tf.cast(u, tf.float32), [1, -1])
    v = tf.reshape(tf.cast(v, tf.float32), [1, -1])
    out = []
    for s in utils.batches(aa.size, 2048):
        offsets = tf.constant(aa[s], tf.float32)[:, None] * u + tf.constant(bb[s], tf.float32)[:, None] * v
        out.append(norms.per_example_norm(offsets, norm).numpy())
    return np.concatenate(out)


def input_surface(model, x, y=None, *, direction: str = "random", span: float | None = None,
                  steps: int = 41, eps: float = 0.3, norm: str = "linf",
                  clip: tuple[float, float] | None = None, trajectory: bool = True,
                  attack_steps: int = 10, seed: int = 0, batch_size: int = 1024,
                  progress: bool = False) -> Surface:
    """Decision and cross-entropy surface around one input.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: one input ``[1, ...]`` or ``[...]``.
        y: its label; ``None`` uses the prediction.
        direction: kind of ``u``: one of :data:`DIRECTIONS`.
        span: the grid covers ``[-span, span]²``; default ``2 * eps``.
        steps: grid points per axis.
        eps: threat radius: the ball marked on plots and the attack's budget.
        norm: threat norm, ``"linf"`` or ``"l2"``.
        clip: valid input range, or ``None`` (default): the surface of ``d`` on
            the plane itself. With a range, grid points and attack iterates are
            clipped into it; the plane is then bent at the range's faces and the
            projected trajectory is only approximate.
        trajectory: also run BIM (on the loss of ``direction``, same ``clip``)
            and project it onto the plane. Without clipping its first step lies
            on the plane when ``u`` is that attack's direction.
        attack_steps: BIM steps.
        seed: seed of the random directions.
        batch_size: grid points per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`Surface` with ``space="input"``.

    Raises:
        ValueError: naming a bad argument.
    """
    utils.check_choice("direction", direction, DIRECTIONS)
    norms.validate_norm(norm)
    eps = utils.check_positive("eps", eps)
    span = 2.0 * eps if span is None else utils.check_positive("span", span)
    steps = utils.check_positive_int("steps", steps)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    inputs = getattr(model, "inputs", None)
    if inputs and x.shape.rank == len(inputs[0].shape) - 1:
        x = x[None]
    if int(x.shape[0]) != 1:
        raise ValueError(f"x must hold one input, got a batch of {int(x.shape[0])}")
    label = resolve_labels(model, x, y, targeted=False)
    u, v = input_directions(model, x, label, direction, norm=norm, seed=seed)
    alphas = np.linspace(-span, span, steps)
    betas = np.linspace(-span, span, steps)
    decision, loss = evaluate_plane(model, x, label, u, v, alphas, betas, clip=clip, batch_size=batch_size,
                                    progress=progress)
    aa, bb = _grid(alphas, betas)
    ball = _ball(u, v, aa, bb, norm).reshape(decision.shape)
    surface = Surface(alphas=alphas, betas=betas, decision=decision, loss=loss, space="input",
                      direction=direction, norm=norm, label=int(label[0]), eps=eps, ball=ball)
    if trajectory:
        points = attack_trajectory(model, x, label, attack=direction, eps=eps, steps=attack_steps, norm=norm,
                                   clip=clip)
        coords, offplane = project_onto_plane(points - x, u, v)
        d = losses.decision_margin(model(points, training=False), tf.repeat(label, tf.shape(points)[0]))
        surface.trajectory = coords
        surface.trajectory_offplane = offplane
        surface.trajectory_decision = d.numpy().astype(np.float64)
    return surface


# -- parameter space ------------------------------------------------------------------


def filter_normalized_directions(model, *, seed: int = 0, include_biases: bool = False) -> list[tf.Tensor]:
    """A random direction in weight space, filter-normalised (Li et al. 2017).

    One Gaussian tensor per trainable variable; for every kernel (2-D or
    more) each filter, the slice along the last (output) axis, is rescaled to
    the norm of the same filter of the weights. One-dimensional variables
    (biases, normalisation scales) get a zero direction, or, with
    ``include_biases``, a copy of themselves (as in Li et al.'s code).

    Returns:
        Tensors in the order of ``model.trainable_variables``.
    """
    model = unwrap(model)
    out = []
    for i, var in enumerate(model.trainable_variables):
        w = tf.convert_to_tensor(var)
        if w.shape.rank <= 1:
            out.append(tf.identity(w) if include_biases else tf.zeros_like(w))
            continue
        d = tf.random.stateless_normal(tf.shape(w), seed=[seed, i], dtype=w.dtype)
        axes = list(range(w.shape.rank - 1))
        w_norm = tf.sqrt(tf.reduce_sum(tf.square(w), axis=axes, keepdims=True))
        d_norm = tf.sqrt(tf.reduce_sum(tf.square(d), axis=axes, keepdims=True))
        out.append(d * w_norm / tf.maximum(d_norm, tf.cast(norms.TINY, w.dtype)))
    return out


def evaluate_parameter_plane(model, x, y, dir1, dir2, alphas, betas, *, grid_batch: int | None = None,
                             progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``d``, mean cross-entropy and accuracy over ``(x, y)`` at ``θ + a·δ₁ + b·δ₂``.

    A batch of grid points is evaluated in one graph call: the weights of each
    point are built as tensors and the model runs through
    ``keras.Model.stateless_call`` under ``tf.vectorized_map``; the model's
    variables are never modified.

    Args:
        model: classifier returning logits (a Keras model).
        x: inputs ``[N, ...]``.
        y: integer labels ``[N]``.
        dir1: first direction (list like ``model.trainable_variables``).
        dir2: second direction.
        alphas: coordinates along ``dir1``.
        betas: coordinates along ``dir2``.
        grid_batch: grid points per call; default so that a call sees about 8192 examples.
        progress: show a progress bar.

    Returns:
        ``(decision, loss, accuracy)``, each ``[len(betas), len(alphas)]``.
    """
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    n = int(x.shape[0])
    grid_batch = max(1, 8192 // max(n, 1)) if grid_batch is None else utils.check_positive_int(
        "grid_batch", grid_batch)
    theta = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    frozen = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    aa, bb = _grid(alphas, betas)

    grid_batch = min(grid_batch, aa.size)
    out = []
    for s in utils.progress(list(utils.batches(aa.size, grid_batch)), enabled=progress,
                              desc="parameter surface"):
        ab = np.stack([aa[s], bb[s]], axis=1)
        count = len(ab)
        # Pad every call to the same size: one trace, and never a batch of one point (which
        # tf.vectorized_map's converters mishandle for convolutions with loop-variant biases).
        ab = np.concatenate([ab, np.repeat(ab[-1:], max(grid_batch, 2) - count, axis=0)])
        values = _parameter_values(model, theta, frozen, list(dir1), list(dir2), x, y, tf.constant(ab, tf.float32))
        out.append(values.numpy()[:count])
    values = np.concatenate(out).reshape(len(betas), len(alphas), 3)
    return values[..., 0], values[..., 1], values[..., 2]


@tf.function(reduce_retracing=True)
def _parameter_values(model, theta, frozen, dir1, dir2, x, y, ab):
    """``[G, 3]`` mean ``d``, mean CE and accuracy for ``G`` weight-space grid points, in one graph."""

    def one(point):
        weights = [t + tf.cast(point[0], t.dtype) * d1 + tf.cast(point[1], t.dtype) * d2
                   for t, d1, d2 in zip(theta, dir1, dir2)]
        logits, _ = model.stateless_call(weights, frozen, x, training=False)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), logits.dtype)
        return tf.stack([tf.reduce_mean(losses.decision_margin(logits, y)),
                         tf.reduce_mean(losses.cross_entropy(logits, y)), tf.reduce_mean(correct)])

    return tf.vectorized_map(one, ab, fallback_to_while_loop=True)


def parameter_surface(model, x, y, *, span: float = 1.0, steps: int = 21, seed: int = 0,
                      include_biases: bool = False, grid_batch: int | None = None,
                      progress: bool = False) -> Surface:
    """Loss and mean decision surface in weight space along two filter-normalised random directions.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: inputs ``[N, ...]`` the loss is averaged over.
        y: integer labels ``[N]``.
        span: the grid covers ``[-span, span]²`` (1 = one filter norm).
        steps: grid points per axis.
        seed: seed of the directions.
        include_biases: give biases a direction too (see :func:`filter_normalized_directions`).
        grid_batch: grid points per graph call.
        progress: show a progress bar.

    Returns:
        :class:`Surface` with ``space="parameter"`` and ``accuracy`` set.
    """
    span = utils.check_positive("span", span)
    steps = utils.check_positive_int("steps", steps)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    if y is None:
        y = resolve_labels(model, x, None, targeted=False)
    dir1 = filter_normalized_directions(model, seed=2 * seed, include_biases=include_biases)
    dir2 = filter_normalized_directions(model, seed=2 * seed + 1, include_biases=include_biases)
    alphas = np.linspace(-span, span, steps)
    betas = np.linspace(-span, span, steps)
    decision, loss, accuracy = evaluate_parameter_plane(model, x, y, dir1, dir2, alphas, betas,
                                                        grid_batch=grid_batch, progress=progress)
    return Surface(alphas=alphas, betas=betas, decision=decision, loss=loss, space="parameter",
                   direction="random", norm="filter", accuracy=accuracy)
