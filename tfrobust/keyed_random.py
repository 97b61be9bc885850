"""Random numbers keyed by the example, not by the batch (issue #22).

An evaluation sharded over replicas and workers must attack every example exactly as one
process would, whatever batch, replica or worker the example lands in. TF's random ops draw a
stream per op and per call, so an example's random start would depend on its batch companions.
Here every draw is a pure function of ``(key, stream, element)``: ``key`` identifies the
example (:func:`example_keys` of the seed and its global index), ``stream`` the use (which
attack, which eps, which iteration of Square's search) and ``element`` the position inside the
example. The hash is Wellons' ``lowbias32`` (an integer finaliser with full avalanche, public
domain), in ``uint32`` arithmetic that wraps on every TF kernel.
"""

from __future__ import annotations

import zlib

import tensorflow as tf

__all__ = [
    "stream_id",
    "mix32",
    "combine",
    "example_keys",
    "keyed_bits",
    "keyed_uniform",
    "keyed_normal",
    "keyed_integers",
]

_GOLDEN = 0x9E3779B9
"""2^32 / φ: spreads consecutive counters over the whole word before mixing."""


def stream_id(*parts) -> int:
    """A stable 32-bit stream number for a use, from its parts (``"pgd", "0.3", 2``).

    CRC-32 of the parts' text: the same in every process and Python version (``hash()`` is not).
    """
    return zlib.crc32("|".join(str(p) for p in parts).encode()) & 0xFFFFFFFF


def _u32(value) -> tf.Tensor:
    if isinstance(value, tf.Tensor):
        if value.dtype == tf.uint32:
            return value
        return tf.cast(tf.math.floormod(tf.cast(value, tf.int64), 2 ** 32), tf.uint32)
    return tf.constant(int(value) & 0xFFFFFFFF, tf.uint32)


def mix32(x: tf.Tensor) -> tf.Tensor:
    """Wellons' ``lowbias32`` finaliser: a bijection of ``uint32`` where every input bit flips
    each output bit with probability close to 1/2."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def combine(*parts) -> tf.Tensor:
    """One ``uint32`` word from integer parts (Python ints or integer tensors, e.g. a loop counter
    inside a traced function); order matters."""
    out = _u32(parts[0])
    for part in parts[1:]:
        out = _combine(out, _u32(part))
    return out


def _combine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return mix32(tf.bitwise.bitwise_xor(a, mix32(b + tf.constant(_GOLDEN, tf.uint32))))


def example_keys(seed: int | tf.Tensor, index) -> tf.Tensor:
    """The key of each example: a hash of the evaluation's seed and the example's global index.

    Args:
        seed: the evaluation seed.
        index: global indices of the examples (integers, any shape).

    Returns:
        ``uint32`` keys, the shape of ``index``.
    """
    index = tf.convert_to_tensor(index)
    high = tf.bitwise.right_shift(tf.cast(index, tf.int64), tf.constant(32, tf.int64))
    return _combine(_combine(mix32(_u32(seed)), _u32(high)), _u32(index))


def keyed_bits(keys: tf.Tensor, shape, stream) -> tf.Tensor:
    """``uint32`` words of shape ``shape`` (``shape[0]`` = ``len(keys)``), row ``i`` a function of
    ``keys[i]``, ``stream`` and the element's position in the row only."""
    keys = _u32(keys)
    shape = tf.convert_to_tensor(shape, tf.int32)
    per_row = tf.reduce_prod(shape[1:])
    row = _combine(keys, _u32(stream))[:, None]
    counter = tf.cast(tf.range(per_row), tf.uint32)[None, :] * tf.constant(_GOLDEN, tf.uint32)
    return tf.reshape(mix32(tf.bitwise.bitwise_xor(row, mix32(counter))), shape)


def keyed_uniform(keys: tf.Tensor, shape, stream, minval: float = 0.0, maxval: float = 1.0,
                  dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Uniform in ``[minval, maxval)`` with 24 random bits, keyed as :func:`keyed_bits`."""
    bits = tf.bitwise.right_shift(keyed_bits(keys, shape, stream), tf.constant(8, tf.uint32))
    unit = tf.cast(bits, tf.float32) * (1.0 / 2 ** 24)
    return tf.cast(minval + (maxval - minval) * unit, dtype)


def keyed_normal(keys: tf.Tensor, shape, stream, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Standard normal (Box–Muller on two keyed uniforms, the first shifted into ``(0, 1]``)."""
    u1 = 1.0 - keyed_uniform(keys, shape, _combine(_u32(stream), _u32(1)))
    u2 = keyed_uniform(keys, shape, _combine(_u32(stream), _u32(2)))
    z = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
    return tf.cast(z, dtype)


def keyed_integers(keys: tf.Tensor, shape, stream, maxval) -> tf.Tensor:
    """``int32`` uniform in ``[0, maxval)`` (``maxval`` ≥ 1, at most 2^16 for a bias below
    2^-16), keyed as :func:`keyed_bits`."""
    bits = tf.cast(keyed_bits(keys, shape, stream), tf.int64)
    return tf.cast(tf.math.floormod(bits, tf.cast(maxval, tf.int64)), tf.int32)
