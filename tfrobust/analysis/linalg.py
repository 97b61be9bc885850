"""Matrix-free linear algebra on batches: Hessian-vector products, Lanczos, power iteration.

Every operator here acts on a batch of independent problems: a vector is a
tensor ``[N, D]`` (one ``D``-vector per example) and an operator maps
``[N, D] -> [N, D]`` example by example (a block-diagonal matrix). The
Hessian of a per-example function with respect to its own input is such an
operator, and so is ``JᵀJ`` for the Jacobian of a layer. Nothing ever forms
the ``D x D`` matrix.

Example::

    op = hessian_operator(lambda x: decision(model(x), y), x)
    ritz = lanczos(op, tf.random.normal(tf.shape(flat_x)), k=20)
    top = top_eigenvalues(ritz, 5)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

__all__ = [
    "hessian_vector_product",
    "hessian_operator",
    "gram_operator",
    "LanczosResult",
    "lanczos",
    "power_iteration",
    "top_eigenvalues",
    "near_zero_share",
]

Operator = Callable[[tf.Tensor], tf.Tensor]


def hessian_vector_product(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """``H v`` per example, forward-over-backward, for ``fn`` mapping ``[N, ...] -> [N]``.

    The gradient of ``sum(fn(x))`` is taken with a ``GradientTape`` inside a
    ``tf.autodiff.ForwardAccumulator`` that pushes the tangent ``v`` through
    it, so the result is the directional derivative of the gradient: ``H v``.
    Examples must not interact (no batch statistics), so the Hessian of the
    sum is block-diagonal and each block is that example's Hessian.

    Args:
        fn: per-example scalar function.
        x: inputs ``[N, ...]``.
        v: tangents, same shape as ``x``.

    Returns:
        ``H v``, same shape as ``x``.
    """
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(fn(x))
        grad = tape.gradient(value, x)
    hv = acc.jvp(grad, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return hv


def hessian_operator(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> Operator:
    """The per-example Hessian of ``fn`` at ``x`` as an operator on flat ``[N, D]`` vectors."""
    shape = tf.shape(x)
    n = shape[0]

    def matvec(v: tf.Tensor) -> tf.Tensor:
        return tf.reshape(hessian_vector_product(fn, x, tf.reshape(v, shape)), [n, -1])

    return matvec


def gram_operator(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> Operator:
    """``JᵀJ`` per example for the Jacobian ``J`` of ``fn`` at ``x``, from a JVP then a VJP.

    The eigenvalues of ``JᵀJ`` are the squared singular values of ``J``.
    ``fn`` maps ``[N, ...] -> [N, ...]`` example by example.
    """
    shape = tf.shape(x)
    n = shape[0]

    def matvec(v: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.autodiff.ForwardAccumulator(x, tf.reshape(v, shape)) as acc:
                out = fn(x)
            jv = acc.jvp(out, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        jtjv = tape.gradient(out, x, output_gradients=tf.stop_gradient(jv),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.reshape(jtjv, [n, -1])

    return matvec


def _normalise(v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    norm = tf.norm(v, axis=-1)
    safe = tf.where(norm > 0, norm, tf.ones_like(norm))
    return v / safe[:, None], norm


@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """Ritz values of a batch of symmetric operators.

    Attributes:
        values: Ritz values ``[N, k]``, ascending per example.
        weights: squared first components of the Ritz vectors ``[N, k]``: the
            stochastic Lanczos quadrature weights. With a random start vector
            their sum over an interval estimates the share of eigenvalues in it
            (Ubaru et al. 2017; Ghorbani et al. 2019). Each row sums to 1.
        steps: Lanczos steps that did not break down, per example ``[N]``.
    """

    values: tf.Tensor
    weights: tf.Tensor
    steps: tf.Tensor


def lanczos(matvec: Operator, v0: tf.Tensor, k: int, *, tol: float | None = None) -> LanczosResult:
    """``k`` steps of Lanczos with full reorthogonalisation, batched over examples.

    Builds, per example, the tridiagonal ``T = QᵀAQ`` of the operator on the
    Krylov space of ``v0`` and returns its eigen-decomposition. The extreme
    Ritz values converge to the extreme eigenvalues first; with ``k`` equal to
    the dimension (and distinct eigenvalues) they are all of them. When the
    Krylov space is exhausted early (breakdown, ``β ≈ 0``) the remaining steps
    contribute decoupled zeros whose quadrature weight is exactly zero.

    Args:
        matvec: symmetric operator ``[N, D] -> [N, D]``.
        v0: start vectors ``[N, D]`` (random, e.g. Gaussian).
        k: number of steps (Krylov dimension), ``1 <= k``; steps beyond ``D``
            only add decoupled zeros.
        tol: breakdown threshold relative to the largest ``|α| + β`` seen;
            defaults to ``100 * machine epsilon`` of the dtype.

    Returns:
        A :class:`LanczosResult`.
    """
    v0 = tf.convert_to_tensor(v0)
    dtype = v0.dtype
    if tol is None:
        tol = 100.0 * float(np.finfo(dtype.as_numpy_dtype).eps)
    n = tf.shape(v0)[0]
    q, _ = _normalise(v0)
    basis = tf.zeros(tf.concat([[k], tf.shape(v0)], 0), dtype)
    alphas = tf.TensorArray(dtype, size=k)
    betas = tf.TensorArray(dtype, size=k)

    def body(j, q, q_prev, beta_prev, scale, basis, alphas, betas, steps):
        basis = basis + tf.one_hot(j, k, dtype=dtype)[:, None, None] * q[None]
        w = matvec(q)
        alpha = tf.reduce_sum(w * q, axis=-1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - tf.einsum("kn,knd->nd", tf.einsum("knd,nd->kn", basis, w), basis)
        beta = tf.norm(w, axis=-1)
        scale = tf.maximum(scale, tf.abs(alpha) + beta)
        alive = beta > tol * scale
        live_q = tf.reduce_any(q != 0, axis=-1)
        steps = steps + tf.cast(live_q, tf.int32)
        beta = tf.where(alive, beta, tf.zeros_like(beta))
        q_next = tf.where(alive[:, None], w / tf.where(alive, beta, 1.0)[:, None], tf.zeros_like(w))
        return (j + 1, q_next, q, beta, scale, basis, alphas.write(j, alpha), betas.write(j, beta), steps)

    zeros = tf.zeros([n], dtype)
    _, _, _, _, _, _, alphas, betas, steps = tf.while_loop(
        lambda j, *_: j < k, body,
        (tf.constant(0), q, tf.zeros_like(q), zeros, zeros, basis, alphas, betas, tf.zeros([n], tf.int32)))
    alpha = tf.transpose(alphas.stack())  # [N, k]
    beta = tf.transpose(betas.stack())[:, : k - 1]  # [N, k-1]
    tri = (tf.linalg.diag(alpha) + tf.linalg.diag(beta, k=1) + tf.linalg.diag(beta, k=-1))
    values, vectors = tf.linalg.eigh(tri)
    weights = tf.square(vectors[:, 0, :])
    return LanczosResult(values=values, weights=weights, steps=steps)


def power_iteration(matvec: Operator, v0: tf.Tensor, iters: int, k: int = 1) -> tf.Tensor:
    """The ``k`` eigenvalues of largest magnitude by power iteration with deflation.

    For each of ``k`` rounds: iterate ``v <- A v / ||A v||`` on the operator
    deflated by the eigenpairs already found, and take the Rayleigh quotient.
    Convergence depends on the gap between ``|λ_i|`` and ``|λ_{i+1}|``.

    Args:
        matvec: symmetric operator ``[N, D] -> [N, D]``.
        v0: start vectors ``[N, D]``.
        iters: iterations per eigenvalue.
        k: number of eigenvalues.

    Returns:
        Signed eigenvalues ``[N, k]``, in the order found (descending ``|λ|``).
    """
    v0 = tf.convert_to_tensor(v0)
    found_values: list[tf.Tensor] = []
    found_vectors: list[tf.Tensor] = []

    def deflated(v):
        w = matvec(v)
        for lam, q in zip(found_values, found_vectors):
            w = w - (lam * tf.reduce_sum(q * v, axis=-1))[:, None] * q
        return w

    # After a retrace (a last, smaller batch) the operator's output may lose its static shape;
    # the iteration keeps the width and lets the batch vary.
    invariant = tf.TensorShape([None, *v0.shape[1:]])
    for i in range(k):
        v = v0 if i == 0 else tf.roll(v0, shift=i, axis=-1)
        for q in found_vectors:
            v = v - tf.reduce_sum(q * v, axis=-1)[:, None] * q
        v, _ = _normalise(v)

        def body(j, v):
            w, _ = _normalise(deflated(v))
            return j + 1, tf.ensure_shape(w, invariant)

        _, v = tf.while_loop(lambda j, _: j < iters, body, (tf.constant(0), v),
                             shape_invariants=(tf.TensorShape([]), invariant))
        lam = tf.reduce_sum(v * deflated(v), axis=-1)
        found_values.append(lam)
        found_vectors.append(v)
    return tf.stack(found_values, axis=-1)


def top_eigenvalues(result: LanczosResult, k: int) -> tf.Tensor:
    """The ``k`` Ritz values of largest magnitude per example, signed, by descending ``|λ|``."""
    order = tf.argsort(tf.abs(result.values), axis=-1, direction="DESCENDING", stable=True)
    return tf.gather(result.values, order[:, :k], batch_dims=1)


def near_zero_share(result: LanczosResult, threshold: float, *, relative: bool = False) -> tf.Tensor:
    """Estimated share of eigenvalues with ``|λ| <= threshold``, per example ``[N]``.

    Stochastic Lanczos quadrature: the sum of the quadrature weights of the
    Ritz values inside the interval. With ``relative`` the threshold is a
    fraction of the example's largest ``|λ|`` (an all-zero spectrum counts as
    all near zero).
    """
    mag = tf.abs(result.values)
    thr = tf.cast(threshold, mag.dtype)
    if relative:
        thr = thr * tf.reduce_max(mag, axis=-1, keepdims=True)
    inside = tf.cast(mag <= thr, result.weights.dtype)
    return tf.reduce_sum(inside * result.weights, axis=-1)
