"""Auto-PGD (Croce & Hein 2020): APGD-CE, APGD-DLR and targeted APGD-T."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.base import (
    check_fraction,
    check_number,
    check_static_int,
    clip_to_range,
    prepare_inputs,
    ranked_class,
    resolve_labels,
)

__all__ = [
    "apgd",
    "apgd_checkpoints",
]


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
    check_number("steps", steps, integer=True)
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


def _check_apgd_settings(eps: float, steps: int, target_rank: int | None, targeted: bool, loss: str, rho: float,
                         alpha: float) -> None:
    """Raises ValueError naming the first bad APGD setting (``target_rank`` needs the untargeted CE default)."""
    check_number("eps", eps)
    check_static_int("steps", steps)
    if target_rank is not None:
        check_static_int("target_rank", target_rank)
        if target_rank < 2 or targeted or loss != "ce":
            raise ValueError(f"target_rank={target_rank!r} needs target_rank >= 2, targeted=False and "
                             f"the default loss (got targeted={targeted!r}, loss={loss!r})")
    check_fraction("rho", rho)
    check_fraction("alpha", alpha)


def _ranked_target_loss(model: Callable, x: tf.Tensor, target_rank: int, training: bool) -> Callable:
    """APGD-T's loss: the targeted DLR loss towards the class of the ``target_rank``-th largest clean
    logit; refuses a model with fewer than 4 (or ``target_rank``) classes."""
    clean_logits = losses.logits_of(model, x, training)
    num_classes = clean_logits.shape[-1]
    if num_classes is not None and (num_classes < 4 or target_rank > num_classes):
        raise ValueError(f"target_rank={target_rank} needs at least 4 classes and at most as many "
                         f"as the model's {num_classes}")
    target = ranked_class(clean_logits, target_rank)
    return lambda logits, labels: losses.dlr_targeted_loss(logits, labels, target)


def _objective(model: Callable, z: tf.Tensor, labels: tf.Tensor, loss_fn: Callable, direction: tf.Tensor, *,
               targeted: bool, training: bool, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-example objective at ``z`` (to maximise: ``direction`` times the loss), its input gradient
    and success."""
    with tf.GradientTape() as tape:
        tape.watch(z)
        logits = losses.logits_of(model, z, training)
        f = direction * tf.cast(loss_fn(logits, labels), dtype)
        total = tf.reduce_sum(f)
    grad = tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    pred = tf.argmax(logits, -1, output_type=tf.int32)
    success = tf.equal(pred, labels) if targeted else tf.not_equal(pred, labels)
    return f, grad, success


def _checkpoint_tables(steps: int, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """Indexed by iteration ``0 .. steps``: whether it is a checkpoint (:func:`apgd_checkpoints`), and
    the length of the interval it closes (1 elsewhere), as ``dtype``."""
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = [False] * (int(steps) + 1)
    interval = [1] * (int(steps) + 1)
    for prev, w in zip(checkpoints, checkpoints[1:]):
        is_checkpoint[w], interval[w] = True, w - prev
    return tf.constant(is_checkpoint), tf.constant(interval, dtype)


def _initial_state(x: tf.Tensor, x0: tf.Tensor, f0: tf.Tensor, g0: tf.Tensor, fooled0: tf.Tensor,
                   eps: tf.Tensor) -> dict:
    """The search state at iteration 1, from the start ``x0`` (objective ``f0``, gradient ``g0``)."""
    dtype = x.dtype
    batch = tf.shape(x)[0]
    return dict(
        t=tf.constant(1), x_cur=x0, x_prev=x0, f_cur=f0, g_cur=g0,
        eta=tf.fill([batch], 2.0 * eps),
        x_best=x0, f_best=f0, g_best=g0,
        x_fool=x0, fooled=fooled0,
        increases=tf.zeros([batch], dtype), f_best_last=f0,
        reduced_last=tf.zeros([batch], tf.bool),
    )


def _next_state(s: dict, x_new: tf.Tensor, evaluated: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
                is_checkpoint: tf.Tensor, interval: tf.Tensor, rho: tf.Tensor) -> dict:
    """The state after the step to ``x_new``, whose ``evaluated`` is ``(objective, gradient,
    success)``: the first fooling point, the best point, and at a checkpoint the halved step and
    restart from the best."""
    f_new, g_new, success = evaluated
    t, x_cur = s["t"], s["x_cur"]
    dtype = x_new.dtype
    first = tf.logical_and(success, tf.logical_not(s["fooled"]))
    x_fool = tf.where(norms.expand_like(first, x_new), x_new, s["x_fool"])
    fooled = tf.logical_or(s["fooled"], success)

    increases = s["increases"] + tf.cast(f_new > s["f_cur"], dtype)
    better = f_new > s["f_best"]
    better_x = norms.expand_like(better, x_new)
    x_best = tf.where(better_x, x_new, s["x_best"])
    g_best = tf.where(better_x, g_new, s["g_best"])
    f_best = tf.where(better, f_new, s["f_best"])

    # Checkpoint: halve the step and restart from the best point where the
    # search stalled (condition 1: too few increases; condition 2: step not
    # halved last time and no progress of the best loss since).
    at = tf.gather(is_checkpoint, t)
    cond1 = increases < rho * tf.gather(interval, t)
    cond2 = tf.logical_and(tf.logical_not(s["reduced_last"]), f_best <= s["f_best_last"])
    halve = tf.logical_and(at, tf.logical_or(cond1, cond2))
    halve_x = norms.expand_like(halve, x_new)
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
    keys: tf.Tensor | None = None,
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
        seed: seed of the random start: the same start on every call (stateless draws).
        target_rank: APGD-T: maximise the targeted DLR loss towards the class with
            the ``target_rank``-th largest logit at ``x`` (2 = the runner-up),
            still counting any misclassification as success; ``loss`` and
            ``targeted`` must then be left at their defaults. AutoAttack runs
            ranks 2 to 10 one after the other.
        keys: one ``uint32`` key per example (:func:`tfrobust.keyed_random.example_keys`):
            the random start then depends on the example alone, not on its batch.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_apgd_settings(eps, steps, target_rank, targeted, loss, rho, alpha)
    loss_fn = losses.attack_loss(loss)

    x = prepare_inputs(model, x, clip=clip, norm=norm)
    dtype = x.dtype
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    direction = tf.cast(-1.0 if targeted else 1.0, dtype)
    eps_t = tf.cast(eps, dtype)
    if target_rank is not None:
        loss_fn = _ranked_target_loss(model, x, target_rank, training)

    def project(z):
        return clip_to_range(x + norms.project(z - x, eps_t, norm), clip)

    def evaluate(z):
        return _objective(model, z, labels, loss_fn, direction, targeted=targeted, training=training, dtype=dtype)

    if random_start:
        x0 = project(x + norms.random_start(tf.shape(x), eps_t, norm, dtype=dtype, seed=seed, keys=keys))
    else:
        x0 = project(x)
    f0, g0, fooled0 = evaluate(x0)

    is_checkpoint, interval = _checkpoint_tables(steps, dtype)
    rho_t, alpha_t = tf.cast(rho, dtype), tf.cast(alpha, dtype)
    state = _initial_state(x, x0, f0, g0, fooled0, eps_t)

    def cond(s):
        return tf.logical_and(s["t"] <= steps, tf.logical_not(tf.reduce_all(s["fooled"])))

    def body(s):
        t, x_cur = s["t"], s["x_cur"]
        a = tf.where(t == 1, tf.ones([], dtype), alpha_t)
        z = project(x_cur + norms.expand_like(s["eta"], x_cur) * norms.steepest_step(s["g_cur"], norm))
        x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - s["x_prev"]))
        return _next_state(s, x_new, evaluate(x_new), is_checkpoint, interval, rho_t)

    out = tf.while_loop(cond, lambda s: (body(s),), (state,))
    out = out[0] if isinstance(out, (tuple, list)) else out
    x_adv = tf.where(norms.expand_like(out["fooled"], x), out["x_fool"], out["x_best"])
    return tf.stop_gradient(x_adv)
