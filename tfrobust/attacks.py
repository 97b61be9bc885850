"""Graph-safe, batched attacks: white-box (FGSM, BIM, PGD, C&W, APGD) and black-box (Square).

Every attack is a pure function ``(model, x, y=None, *, eps, ...) -> x_adv``:
no ``.numpy()`` inside, usable eagerly, inside ``tf.function``, a
``train_step`` and a distribution strategy (it runs on whatever replica calls
it). The result is under ``tf.stop_gradient``, inside the ``eps`` ball of
``norm`` around ``x`` and inside ``clip``. Norm maths lives in
:mod:`tfrobust.norms` and losses in :mod:`tfrobust.losses` (DESIGN §3.1-3.2).

``y=None`` attacks the model's own prediction; ``targeted=True`` with
``y=None`` targets the least-likely class.

The strong evaluation of DESIGN §1.4 uses :func:`apgd` (APGD-CE and APGD-DLR,
Croce & Hein 2020) and the score-based black-box :func:`square` attack
(Andriushchenko et al. 2020); :mod:`tfrobust.evaluation` runs them as a cascade.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms

__all__ = [
    "fgsm",
    "pgd",
    "bim",
    "cw",
    "apgd",
    "square",
    "apgd_checkpoints",
    "square_p_schedule",
    "scale_radius",
    "ATTACKS",
    "get_attack",
    "AttackConfig",
    "resolve_labels",
    "default_step_size",
]


_MAX_UNROLL = 40  # longer PGD loops use tf.while_loop (graph size and trace time)


def _check_number(name: str, value, *, positive: bool = False, integer: bool = False) -> None:
    if isinstance(value, tf.Tensor):
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise ValueError(f"{name}={value!r} must be a number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r} must be {'positive' if positive else 'non-negative'}")


def scale_radius(eps: float, step_size: float, scale: float | tf.Tensor | None) -> tuple:
    """``(eps * scale, step_size * scale)`` for an eps warm-up; ``scale=None`` leaves both.

    ``scale`` is a number in [0, 1] or a scalar tensor (not checked).
    """
    if scale is None:
        return eps, step_size
    if isinstance(scale, tf.Tensor):
        scale = tf.cast(scale, tf.float32)
        return scale * eps, scale * step_size
    _check_number("eps_scale", scale)
    if scale > 1:
        raise ValueError(f"eps_scale={scale!r} must be in [0, 1]")
    return eps * float(scale), step_size * float(scale)


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for an iterative attack: ``2.5 * eps / steps``."""
    return 2.5 * float(eps) / max(int(steps), 1)


def _check_clip(clip) -> None:
    if clip is None:
        return
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise ValueError(f"clip={clip!r} must be a pair (low, high) or None") from None
    if not lo < hi:
        raise ValueError(f"clip={clip!r} must have low < high")


def _check_model(model) -> None:
    if isinstance(model, tf.Module) or hasattr(model, "layers"):
        losses.check_logits(model, name=getattr(model, "name", "model"))


def resolve_labels(model: Callable, x: tf.Tensor, y, *, targeted: bool, training: bool = False):
    """Integer labels for an attack: ``y`` as given, else the prediction.

    One-hot ``y`` is reduced by argmax. With ``y=None`` an untargeted attack
    uses the model's predicted class and a targeted one the least-likely class.
    """
    if y is None:
        logits = tf.stop_gradient(model(x, training=training))
        if tf.executing_eagerly():
            losses.check_logits(logits)
        return losses.least_likely(logits) if targeted else tf.argmax(logits, -1, output_type=tf.int32)
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2:
        y = tf.argmax(y, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(y, [-1]), tf.int32)


def _clip(x: tf.Tensor, clip) -> tf.Tensor:
    if clip is None:
        return x
    return tf.clip_by_value(x, tf.cast(clip[0], x.dtype), tf.cast(clip[1], x.dtype))


def pgd(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "ce",
    targeted: bool = False,
    training: bool = False,
    seed: int | None = None,
) -> tf.Tensor:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2.

    Each step moves ``step_size`` along the steepest-ascent direction of
    ``loss`` for ``norm`` (descent when ``targeted``), then projects back onto
    the ``eps`` ball around ``x`` and into ``clip``.

    Args:
        model: callable mapping images to logits, called as ``model(x, training=...)``.
        x: batch of inputs.
        y: integer or one-hot labels; ``None`` uses the prediction (least-likely class if ``targeted``).
        eps: radius of the threat ball, in input units.
        steps: number of gradient steps.
        step_size: size of each step, in input units.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly inside the ball instead of at ``x``.
        clip: valid input range ``(low, high)``, or ``None``.
        loss: ``"ce"``, ``"cw"`` (margin) or ``"dlr"``.
        targeted: move towards class ``y`` instead of away from it.
        training: the ``training`` flag passed to the model.
        seed: op seed for the random start.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_number("eps", eps)
    _check_number("steps", steps, integer=True)
    _check_number("step_size", step_size)
    _check_clip(clip)
    norms.validate_norm(norm)
    loss_fn = losses.attack_loss(loss)
    _check_model(model)

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    direction = tf.cast(-1.0 if targeted else 1.0, x.dtype)
    step_size = tf.cast(step_size, x.dtype)

    if random_start:
        x_adv = x + norms.random_start(tf.shape(x), eps, norm, dtype=x.dtype, seed=seed)
        x_adv = _clip(x_adv, clip)
    else:
        x_adv = x

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            objective = direction * tf.reduce_sum(loss_fn(model(x_adv, training=training), labels))
        grad = tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x_adv = x_adv + step_size * norms.steepest_step(grad, norm)
        x_adv = _clip(x + norms.project(x_adv - x, eps, norm), clip)
        return i + 1, x_adv

    if isinstance(steps, int) and steps <= _MAX_UNROLL:
        # A short loop is unrolled: inside tf.function the graph optimiser then sees every
        # step, which measured about 20% faster than tf.while_loop for PGD-10 on CPU.
        for i in range(steps):
            _, x_adv = body(i, x_adv)
    else:
        _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)


def fgsm(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    norm: str = "linf",
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "ce",
    targeted: bool = False,
    training: bool = False,
) -> tf.Tensor:
    """Fast gradient (sign) method: one step of size ``eps``, no random start.

    L∞ gives Goodfellow et al.'s FGSM ``x + eps * sign(∇)``; L2 gives the
    fast gradient method ``x + eps * ∇ / ||∇||``. Arguments as in :func:`pgd`.
    """
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm=norm, random_start=False,
               clip=clip, loss=loss, targeted=targeted, training=training)


def bim(model: Callable, x, y=None, *, eps: float, steps: int = 10, step_size: float | None = None,
        random_start: bool = False, **kwargs) -> tf.Tensor:
    """Basic iterative method (Kurakin et al.): PGD without random start.

    ``step_size`` defaults to ``2.5 * eps / steps``. Other arguments as in :func:`pgd`.
    """
    if step_size is None:
        step_size = default_step_size(eps, steps)
    return pgd(model, x, y, eps=eps, steps=steps, step_size=step_size,
               random_start=random_start, **kwargs)


def cw(model: Callable, x, y=None, *, eps: float, steps: int = 10, step_size: float | None = None,
       random_start: bool = False, loss: str = "cw", **kwargs) -> tf.Tensor:
    """C&W-margin attack as the decision-surface paper uses it: PGD on ``max_{i≠y} z_i - z_y``.

    Arguments as in :func:`bim`; ``loss`` defaults to ``"cw"``.
    """
    return bim(model, x, y, eps=eps, steps=steps, step_size=step_size,
               random_start=random_start, loss=loss, **kwargs)


def _per_example(v: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example vector ``[batch]`` to broadcast against ``like``."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def _check_static_int(name: str, value) -> None:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        raise ValueError(f"{name} must be a Python int (it fixes the schedule when the graph is built)")
    _check_number(name, value, integer=True)


def _check_fraction(name: str, value) -> None:
    _check_number(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be in [0, 1]")


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step (Croce & Hein 2020, §3.2).

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, for every ``p_j <= 1``
    (``p = 0, .22, .41, .57, .70, .80, .87, .93, .99``). Repeated values (short
    runs) are dropped. The fractions are exact hundredths, so no rounding error
    moves a checkpoint.

    Args:
        steps: number of APGD iterations.

    Returns:
        The strictly increasing checkpoints, starting with ``0``.
    """
    _check_number("steps", steps, integer=True)
    hundredths = [0, 22]
    while True:
        nxt = hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6)
        if nxt > 100:
            break
        hundredths.append(nxt)
    out: list[int] = []
    for p in hundredths:
        w = -(-p * int(steps) // 100)  # ceil(p/100 * steps) in integers
        if not out or w > out[-1]:
            out.append(w)
    return out


def apgd(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    steps: int = 100,
    norm: str = "linf",
    loss: str = "ce",
    clip: tuple[float, float] | None = (0.0, 1.0),
    targeted: bool = False,
    rho: float = 0.75,
    alpha: float = 0.75,
    random_start: bool = True,
    training: bool = False,
    seed: int | None = None,
    target_rank: int | None = None,
) -> tf.Tensor:
    """Auto-PGD (Croce & Hein 2020, Algorithm 1): PGD with momentum and an adaptive step.

    The step starts at ``2 * eps``; the first step is plain PGD, later ones mix
    the projected gradient step (weight ``alpha`` = 0.75) with the previous move.
    At each checkpoint of :func:`apgd_checkpoints` an example halves its step and
    restarts from its best point when (1) the loss rose in fewer than
    ``rho`` of the steps since the last checkpoint, or (2) its step was not
    halved at the last checkpoint and its best loss has not improved since. All
    of this state is per example. The result is, per example, the first point
    found that fools the model, else the point of highest loss. The loop stops
    early once every example of the batch is fooled.

    Args:
        model: callable mapping inputs to logits, called as ``model(x, training=...)``.
        x: batch of inputs.
        y: integer or one-hot labels; ``None`` uses the prediction (least-likely class if ``targeted``).
        eps: radius of the threat ball, in input units.
        steps: number of iterations (gradient evaluations after the start point), a Python int.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"cw"``.
        clip: valid input range ``(low, high)``, or ``None``.
        targeted: move towards class ``y`` (descends ``loss`` of the target).
        rho: the fraction of loss increases a checkpoint interval needs to keep its step.
        alpha: weight of the projected gradient step against the previous move
            (the momentum term gets ``1 - alpha``), 0.75 in the paper.
        random_start: start uniformly inside the ball instead of at ``x``.
        training: the ``training`` flag passed to the model.
        seed: op seed for the random start.
        target_rank: APGD-T: maximise the targeted DLR loss towards the class with
            the ``target_rank``-th largest logit at ``x`` (2 = the runner-up),
            still counting any misclassification as success; ``loss`` and
            ``targeted`` must then be left at their defaults. AutoAttack runs
            ranks 2 to 10 one after the other.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_number("eps", eps)
    _check_static_int("steps", steps)
    if target_rank is not None:
        _check_static_int("target_rank", target_rank)
        if target_rank < 2 or targeted or loss != "ce":
            raise ValueError(f"target_rank={target_rank!r} needs target_rank >= 2, targeted=False and "
                             f"the default loss (got targeted={targeted!r}, loss={loss!r})")
    _check_fraction("rho", rho)
    _check_fraction("alpha", alpha)
    _check_clip(clip)
    norms.validate_norm(norm)
    loss_fn = losses.attack_loss(loss)
    _check_model(model)

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    dtype = x.dtype
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    direction = tf.cast(-1.0 if targeted else 1.0, dtype)
    eps_t = tf.cast(eps, dtype)
    if target_rank is not None:
        clean_logits = model(x, training=training)
        num_classes = clean_logits.shape[-1]
        if num_classes is not None and (num_classes < 4 or target_rank > num_classes):
            raise ValueError(f"target_rank={target_rank} needs at least 4 classes and at most as many "
                             f"as the model's {num_classes}")
        target = tf.math.top_k(clean_logits, k=target_rank).indices[:, target_rank - 1]
        loss_fn = lambda logits, labels: losses.dlr_targeted_loss(logits, labels, target)  # noqa: E731

    def project(z):
        return _clip(x + norms.project(z - x, eps_t, norm), clip)

    def evaluate(z):
        """Per-example objective (to maximise), its input gradient and success."""
        with tf.GradientTape() as tape:
            tape.watch(z)
            logits = model(z, training=training)
            f = direction * tf.cast(loss_fn(logits, labels), dtype)
            total = tf.reduce_sum(f)
        grad = tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        pred = tf.argmax(logits, -1, output_type=tf.int32)
        success = tf.equal(pred, labels) if targeted else tf.not_equal(pred, labels)
        return f, grad, success

    if random_start:
        x0 = project(x + norms.random_start(tf.shape(x), eps_t, norm, dtype=dtype, seed=seed))
    else:
        x0 = project(x)
    f0, g0, fooled0 = evaluate(x0)

    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = [False] * (int(steps) + 1)
    interval = [1] * (int(steps) + 1)
    for prev, w in zip(checkpoints, checkpoints[1:]):
        is_checkpoint[w], interval[w] = True, w - prev
    is_checkpoint = tf.constant(is_checkpoint)
    interval = tf.constant(interval, dtype)
    rho_t, alpha_t = tf.cast(rho, dtype), tf.cast(alpha, dtype)
    batch = tf.shape(x)[0]

    state = dict(
        t=tf.constant(1), x_cur=x0, x_prev=x0, f_cur=f0, g_cur=g0,
        eta=tf.fill([batch], 2.0 * eps_t),
        x_best=x0, f_best=f0, g_best=g0,
        x_fool=x0, fooled=fooled0,
        increases=tf.zeros([batch], dtype), f_best_last=f0,
        reduced_last=tf.zeros([batch], tf.bool),
    )

    def cond(s):
        return tf.logical_and(s["t"] <= steps, tf.logical_not(tf.reduce_all(s["fooled"])))

    def body(s):
        t, x_cur = s["t"], s["x_cur"]
        a = tf.where(t == 1, tf.ones([], dtype), alpha_t)
        z = project(x_cur + _per_example(s["eta"], x_cur) * norms.steepest_step(s["g_cur"], norm))
        x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - s["x_prev"]))
        f_new, g_new, success = evaluate(x_new)

        first = tf.logical_and(success, tf.logical_not(s["fooled"]))
        x_fool = tf.where(_per_example(first, x_new), x_new, s["x_fool"])
        fooled = tf.logical_or(s["fooled"], success)

        increases = s["increases"] + tf.cast(f_new > s["f_cur"], dtype)
        better = f_new > s["f_best"]
        better_x = _per_example(better, x_new)
        x_best = tf.where(better_x, x_new, s["x_best"])
        g_best = tf.where(better_x, g_new, s["g_best"])
        f_best = tf.where(better, f_new, s["f_best"])

        # Checkpoint: halve the step and restart from the best point where the
        # search stalled (condition 1: too few increases; condition 2: step not
        # halved last time and no progress of the best loss since).
        at = tf.gather(is_checkpoint, t)
        cond1 = increases < rho_t * tf.gather(interval, t)
        cond2 = tf.logical_and(tf.logical_not(s["reduced_last"]), f_best <= s["f_best_last"])
        halve = tf.logical_and(at, tf.logical_or(cond1, cond2))
        halve_x = _per_example(halve, x_new)
        return dict(
            t=t + 1,
            x_cur=tf.where(halve_x, x_best, x_new),
            x_prev=x_cur,
            f_cur=tf.where(halve, f_best, f_new),
            g_cur=tf.where(halve_x, g_best, g_new),
            eta=tf.where(halve, 0.5 * s["eta"], s["eta"]),
            x_best=x_best, f_best=f_best, g_best=g_best,
            x_fool=x_fool, fooled=fooled,
            increases=tf.where(at, tf.zeros_like(increases), increases),
            f_best_last=tf.where(at, f_best, s["f_best_last"]),
            reduced_last=tf.where(at, halve, s["reduced_last"]),
        )

    out = tf.while_loop(cond, lambda s: (body(s),), (state,))
    out = out[0] if isinstance(out, (tuple, list)) else out
    x_adv = tf.where(_per_example(out["fooled"], x), out["x_fool"], out["x_best"])
    return tf.stop_gradient(x_adv)


_SQUARE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(p_init, i, queries) -> tf.Tensor:
    """Fraction of pixels the Square attack changes at iteration ``i`` of ``queries``.

    The published L∞ schedule, written for 10,000 queries and rescaled to the
    budget: with ``it = floor(10000 * i / queries)``, ``p_init`` is halved
    after ``it`` = 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

    Args:
        p_init: initial fraction.
        i: iteration index (0-based; Python int or integer tensor).
        queries: the query budget.

    Returns:
        A float32 scalar tensor.
    """
    it = (tf.cast(i, tf.int64) * 10000) // tf.maximum(tf.cast(queries, tf.int64), 1)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(_SQUARE_BOUNDS, tf.int64), tf.int32))
    return tf.cast(p_init, tf.float32) / tf.pow(2.0, tf.cast(halvings, tf.float32))


def _image_view(x: tf.Tensor) -> tuple[int, int, int]:
    """Static ``(height, width, channels)`` of inputs viewed as NHWC images.

    Rank 2 ``[batch, d]`` is one row of ``d`` pixels, rank 3 is single-channel.
    """
    dims = x.shape[1:]
    if not dims.is_fully_defined():
        raise ValueError(f"square needs inputs of fully known shape, got {x.shape}")
    dims = dims.as_list()
    if len(dims) == 1:
        return 1, dims[0], 1
    if len(dims) == 2:
        return dims[0], dims[1], 1
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    raise ValueError(f"square supports inputs of rank 2 to 4, got shape {x.shape}")


def square(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    queries: int = 5000,
    p_init: float = 0.8,
    norm: str = "linf",
    clip: tuple[float, float] | None = (0.0, 1.0),
    targeted: bool = False,
    training: bool = False,
    seed: int | tf.Tensor | None = None,
    retries: int = 10,
) -> tf.Tensor:
    """Square attack, L∞ (Andriushchenko et al. 2020): score-based random search.

    Uses only the model's logits, never its gradient. Starts from vertical
    stripes (one random ``±eps`` per column and channel), then each query
    proposes to overwrite one random square window with one random ``±eps``
    per channel (a proposal that would leave the point unchanged is redrawn, up
    to ``retries`` times) and keeps it only if the margin
    ``z_y - max_{i≠y} z_i`` decreases. The window covers a fraction
    :func:`square_p_schedule` of the pixels (side at least 1 and below the
    image side). An example stops once misclassified; the loop stops once all
    are. ``queries`` counts the start point, as the paper does.

    Inputs are viewed as NHWC images (rank 2 as one row of pixels, where the
    window is an interval). ``p_init=0.8`` is AutoAttack's setting for robust
    models; the paper uses 0.05 on undefended ImageNet models.

    Args:
        model: callable mapping inputs to logits, called as ``model(x, training=...)``.
        x: batch of inputs.
        y: integer or one-hot labels; ``None`` uses the prediction (least-likely class if ``targeted``).
        eps: L∞ radius, in input units.
        queries: query budget per example (forward passes, including the start), a Python int.
        p_init: initial fraction of pixels per window.
        norm: only ``"linf"``.
        clip: valid input range ``(low, high)``, or ``None``.
        targeted: reach class ``y`` (minimises ``max_{i≠y} z_i - z_y``).
        training: the ``training`` flag passed to the model.
        seed: integer (or integer scalar tensor) seed of the stateless random
            draws; ``None`` draws one from TF's global generator.
        retries: redraws of a proposal that would not change the point.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_number("eps", eps)
    _check_static_int("queries", queries)
    _check_fraction("p_init", p_init)
    _check_number("retries", retries, integer=True)
    _check_clip(clip)
    norms.validate_norm(norm)
    if norm != "linf":
        raise ValueError(f"norm={norm!r}: square supports only 'linf'")
    _check_model(model)

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    dtype = x.dtype
    if int(queries) == 0:
        return tf.stop_gradient(_clip(x, clip))
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    height, width, channels = _image_view(x)
    shape = tf.shape(x)
    x4 = tf.reshape(x, [-1, height, width, channels])
    batch = tf.shape(x4)[0]
    eps_t = tf.cast(eps, dtype)

    if seed is None:
        base = tf.random.uniform([2], 0, 2 ** 31 - 1, dtype=tf.int64)
    else:
        base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])

    def draw(key, i, j, draw_shape, maxval):
        s = base
        for data in (key, i, j):
            s = tf.random.experimental.stateless_fold_in(s, tf.cast(data, tf.int64))
        return tf.random.stateless_uniform(draw_shape, seed=s, minval=0, maxval=maxval, dtype=tf.int32)

    def signs(key, i, j, draw_shape):
        return tf.cast(2 * draw(key, i, j, draw_shape, 2) - 1, dtype)

    def query(z4):
        """Margin to minimise and success, per example."""
        logits = model(tf.reshape(z4, shape), training=training)
        margin = tf.cast(losses.decision_margin(logits, labels), dtype)
        pred = tf.argmax(logits, -1, output_type=tf.int32)
        if targeted:
            return -margin, tf.equal(pred, labels)
        return margin, tf.not_equal(pred, labels)

    # Vertical stripes: one sign per column and channel, the same down each column.
    x_best = _clip(x4 + eps_t * signs(0, 0, 0, [batch, 1, width, channels]), clip)
    m_best, fooled = query(x_best)

    one_d = min(height, width) == 1
    length = max(height, width)
    side_max = max((length if one_d else min(height, width)) - 1, 1)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]

    def window_side(i):
        p = tf.cast(square_p_schedule(p_init, i, queries), tf.float64)
        area = p * length if one_d else tf.sqrt(p * height * width)
        return tf.clip_by_value(tf.cast(tf.round(area), tf.int32), 1, side_max)

    def body(i, x_best, m_best, fooled):
        side = window_side(i)
        side_h = 1 if height == 1 else side
        side_w = 1 if width == 1 else side
        top = draw(1, i, 0, [batch, 1, 1], height - side_h + 1)
        left = draw(2, i, 0, [batch, 1, 1], width - side_w + 1)
        mask = ((rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w))[..., None]
        delta = x_best - x4

        def propose(s):
            return _clip(x4 + tf.where(mask, eps_t * s, delta), clip)

        def unchanged(candidate):
            return tf.reduce_all(tf.abs(candidate - x_best) < 1e-7, axis=[1, 2, 3])

        def redraw(j, s):
            again = unchanged(propose(s))[:, None, None, None]
            return j + 1, tf.where(again, signs(3, i, j, [batch, 1, 1, channels]), s)

        s0 = signs(3, i, 0, [batch, 1, 1, channels])
        _, s = tf.while_loop(
            lambda j, s: tf.logical_and(j <= retries, tf.reduce_any(unchanged(propose(s)))),
            redraw, (tf.constant(1), s0))
        x_new = propose(s)
        m_new, success = query(x_new)
        accept = tf.logical_and(m_new < m_best, tf.logical_not(fooled))
        x_best = tf.where(accept[:, None, None, None], x_new, x_best)
        m_best = tf.where(accept, m_new, m_best)
        fooled = tf.logical_or(fooled, tf.logical_and(accept, success))
        # Keep the static batch size (masks drawn with a dynamic batch lose it, which
        # tf.while_loop rejects when the batch is known, e.g. one example left).
        return (i + 1, tf.ensure_shape(x_best, static[0]), tf.ensure_shape(m_best, static[1]),
                tf.ensure_shape(fooled, static[2]))

    static = (x_best.shape, m_best.shape, fooled.shape)
    _, x_best, _, _ = tf.while_loop(
        lambda i, xb, mb, f: tf.logical_and(i < queries - 1, tf.logical_not(tf.reduce_all(f))),
        body, (tf.constant(0), x_best, m_best, fooled))
    return tf.stop_gradient(tf.reshape(x_best, shape))


ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "cw": cw, "apgd": apgd,
                               "square": square}
"""Attack name -> function."""


def get_attack(name: str) -> Callable:
    """Looks up an attack by name.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    if name not in ATTACKS:
        raise ValueError(f"attack {name!r} is unknown; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully specified attack, for training objectives and evaluation.

    ``step_size=None`` means ``2.5 * eps / steps`` (Madry et al.). For
    ``name="apgd"`` the step is adaptive (``step_size`` is ignored) and
    ``loss`` picks APGD-CE or APGD-DLR, or ``target_rank`` makes it one run of
    APGD-T (see :func:`apgd`); for ``name="square"`` ``steps`` is the query
    budget, the loss is always the margin and ``norm`` must be ``"linf"``.
    """

    name: str = "pgd"
    eps: float = 0.3
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    random_start: bool | None = None
    targeted: bool = False
    target_rank: int | None = None

    def __post_init__(self):
        get_attack(self.name)
        _check_number("eps", self.eps)
        _check_number("steps", self.steps, integer=True)
        if self.step_size is not None:
            _check_number("step_size", self.step_size)
        norms.validate_norm(self.norm)
        losses.attack_loss(self.loss)
        if self.name == "square" and self.norm != "linf":
            raise ValueError(f"norm={self.norm!r}: square supports only 'linf'")
        if self.target_rank is not None and self.name != "apgd":
            raise ValueError(f"target_rank={self.target_rank!r}: only apgd (APGD-T) takes a target rank")

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        return default_step_size(self.eps, self.steps) if self.step_size is None else float(self.step_size)

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False,
                 eps_scale: float | tf.Tensor | None = None) -> tf.Tensor:
        """Runs the attack on a batch.

        ``eps_scale`` (a scalar, possibly a tensor) multiplies ``eps`` and the
        step size: training uses it to ramp the threat radius up (eps warm-up).
        """
        eps, step_size = scale_radius(self.eps, self.resolved_step_size, eps_scale)
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=eps, norm=self.norm, clip=clip, loss=self.loss,
                        targeted=self.targeted, training=training)
        if self.name == "apgd":
            return apgd(model, x, y, eps=eps, steps=self.steps, norm=self.norm, loss=self.loss,
                        clip=clip, targeted=self.targeted, training=training,
                        random_start=True if self.random_start is None else self.random_start,
                        target_rank=self.target_rank)
        if self.name == "square":
            return square(model, x, y, eps=eps, queries=self.steps, norm=self.norm, clip=clip,
                          targeted=self.targeted, training=training)
        random_start = self.name == "pgd" if self.random_start is None else self.random_start
        loss = "cw" if self.name == "cw" else self.loss
        return pgd(model, x, y, eps=eps, steps=self.steps, step_size=step_size,
                   norm=self.norm, random_start=random_start, clip=clip, loss=loss,
                   targeted=self.targeted, training=training)

    def to_dict(self) -> dict:
        """JSON-friendly description."""
        return dataclasses.asdict(self)
