"""Evaluation at any scale (issue #22): keyed random numbers, chunks, replicas, workers, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import keyed_random, norms, training
from tfrobust.attacks import Budget, apgd, pgd, square
from tfrobust.evaluation import evaluate_model
from tfrobust.evaluation.sharded import ChunkStore, Shard, chunk_slices, owned_chunks, shard_of


def test_keyed_uniform_is_uniform_and_each_row_depends_on_its_key_alone():
    keys = keyed_random.example_keys(7, tf.range(1000))
    u = keyed_random.keyed_uniform(keys, [1000, 100], stream=3).numpy()
    # 1e5 draws: the mean's standard error is sqrt(1/12 / 1e5) = 9.1e-4; 5 of them is 4.6e-3.
    assert abs(u.mean() - 0.5) < 4.6e-3 and abs(u.var() - 1 / 12) < 2e-3
    assert u.min() >= 0.0 and u.max() < 1.0
    # Ten equal bins: Pearson's chi-square on 9 degrees of freedom exceeds 33.7 with probability 1e-4.
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 33.7, counts
    alone = keyed_random.keyed_uniform(tf.gather(keys, [17, 3]), [2, 100], stream=3).numpy()
    np.testing.assert_array_equal(alone, u[[17, 3]])  # the batch around a row changes nothing
    other = keyed_random.keyed_uniform(keys[:2], [2, 100], stream=4).numpy()
    assert not np.any(other == u[:2])  # another use draws other numbers (24-bit ties: ~1e-5)
    reseeded = keyed_random.keyed_uniform(keyed_random.example_keys(8, tf.range(2)), [2, 100], 3).numpy()
    assert not np.any(reseeded == u[:2])
    # Adjacent elements and adjacent examples are uncorrelated (|r| < 5 / sqrt(n)).
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 5 / np.sqrt(99_000)
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 5 / np.sqrt(99_900)


def test_keyed_normal_and_integers():
    keys = keyed_random.example_keys(0, tf.range(500))
    z = keyed_random.keyed_normal(keys, [500, 200], stream=keyed_random.stream_id("z")).numpy()
    assert abs(z.mean()) < 5 / np.sqrt(1e5) and abs(z.std() - 1) < 0.01
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01  # the normal's one-sigma mass
    k = keyed_random.keyed_integers(keys, [500, 200], stream=1, maxval=7).numpy()
    assert k.min() == 0 and k.max() == 6 and k.dtype == np.int32
    assert np.all(np.abs(np.bincount(k.ravel()) - 1e5 / 7) < 5 * np.sqrt(1e5 / 7))
    assert keyed_random.stream_id("pgd", "0.3", 2) == keyed_random.stream_id("pgd", "0.3", 2)
    assert keyed_random.stream_id("pgd", "0.3") != keyed_random.stream_id("pgd", "0.30")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_keyed_random_start_stays_in_the_ball(norm):
    keys = keyed_random.example_keys(1, tf.range(64))
    delta = norms.random_start(tf.constant([64, 5, 5, 2]), 0.3, norm, keys=keys).numpy()
    size = np.abs(delta).max(axis=(1, 2, 3)) if norm == "linf" else np.sqrt((delta ** 2).sum(axis=(1, 2, 3)))
    assert np.all(size <= 0.3 + 1e-6) and size.min() > 0.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_seeded_random_start_is_the_same_on_every_call(norm):
    # Without keys, an integer seed is a stateless draw: the same point on a second call, eagerly and
    # traced (stateful op seeds gave a new point on each call), another seed or stream another point.
    shape = tf.constant([64, 5, 5, 2])
    first = norms.random_start(shape, 0.3, norm, seed=5).numpy()
    np.testing.assert_array_equal(norms.random_start(shape, 0.3, norm, seed=5).numpy(), first)
    traced = tf.function(lambda: norms.random_start(shape, 0.3, norm, seed=5))
    np.testing.assert_array_equal(traced().numpy(), first)
    np.testing.assert_array_equal(traced().numpy(), first)
    assert not np.any(norms.random_start(shape, 0.3, norm, seed=6).numpy() == first)
    assert not np.any(norms.random_start(shape, 0.3, norm, seed=5, stream=1).numpy() == first)
    size = np.abs(first).max(axis=(1, 2, 3)) if norm == "linf" else np.sqrt((first ** 2).sum(axis=(1, 2, 3)))
    assert np.all(size <= 0.3 + 1e-6) and size.min() > 0.05
    unseeded = norms.random_start(shape, 0.3, norm).numpy()
    assert not np.any(norms.random_start(shape, 0.3, norm).numpy() == unseeded)


def test_seeded_pgd_is_the_same_attack_on_every_call():
    model = _tiny_model()
    x = tf.random.stateless_uniform([8, 6, 6, 1], seed=[0, 1])
    y = tf.constant([0, 1, 2, 3] * 2)
    first = pgd(model, x, y, eps=0.2, steps=2, step_size=0.1, seed=3).numpy()
    np.testing.assert_array_equal(pgd(model, x, y, eps=0.2, steps=2, step_size=0.1, seed=3).numpy(), first)
    assert not np.array_equal(pgd(model, x, y, eps=0.2, steps=2, step_size=0.1, seed=4).numpy(), first)


def _tiny_model(seed=0, shape=(6, 6, 1), classes=4):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape), keras.layers.Conv2D(3, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(classes)])


@pytest.mark.parametrize("attack", [
    lambda m, x, y, k: pgd(m, x, y, eps=0.2, steps=3, step_size=0.1, keys=k),
    lambda m, x, y, k: pgd(m, x, y, eps=0.5, steps=3, step_size=0.2, norm="l2", keys=k),
    lambda m, x, y, k: apgd(m, x, y, eps=0.2, steps=5, keys=k),
    lambda m, x, y, k: square(m, x, y, eps=0.2, queries=30, keys=k),
], ids=["pgd", "pgd-l2", "apgd", "square"])
def test_keyed_attacks_give_each_example_the_same_point_in_any_batch(attack):
    model = _tiny_model()
    x = np.random.default_rng(0).uniform(size=(10, 6, 6, 1)).astype("float32")
    y = np.arange(10) % 4
    keys = keyed_random.example_keys(3, tf.range(10))
    whole = attack(model, x, y, keys).numpy()
    parts = [attack(model, x[s], y[s], tf.gather(keys, np.r_[s])).numpy() for s in (slice(0, 3), slice(3, 10))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-6)
    assert not np.allclose(whole, x)  # it did move


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 4, n)


def _comparable(result):
    """An evaluation's JSON without what depends on the run (time) or the machine's layout."""
    out = dict(result)
    out.pop("seconds")
    out.pop("distribution")
    return out


KW = dict(attacks=["fgsm", "pgd", "autoattack-lite"], eps="0.05,0.1",
          budget=Budget(steps=3, apgd_steps=5, square_queries=40), progress=False)


def test_same_report_for_any_batch_size_and_two_replicas():
    model = _tiny_model()
    x, y = _data()
    one = evaluate_model(model, x, y, batch_size=16, **KW)
    assert one["distribution"] == {"workers": 1, "replicas": 1, "chunk_size": 16}
    other_batches = evaluate_model(model, x, y, batch_size=7, **KW)
    assert _comparable(other_batches) == _comparable(one)
    strategy = training.build_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2  # the two logical CPUs of conftest
    with strategy.scope():
        mirrored_model = _tiny_model()
    replicas = evaluate_model(mirrored_model, x, y, batch_size=16, strategy=strategy, **KW)
    assert replicas["distribution"]["replicas"] == 2
    assert _comparable(replicas) == _comparable(one)
    assert 0 < one["worst_case"]["0.1"] < one["clean_accuracy"]  # the attacks did something


def test_resume_directory_continues_and_refuses_another_evaluation(tmp_path):
    model = _tiny_model()
    x, y = _data(24)
    full = evaluate_model(model, x, y, batch_size=8, resume=tmp_path / "r", **KW)
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert files == ["chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz", "manifest.json"]
    (tmp_path / "r" / "chunk-000001.npz").unlink()  # as if the run had stopped there
    again = evaluate_model(model, x, y, batch_size=8, resume=tmp_path / "r", **KW)
    assert _comparable(again) == _comparable(full)
    with pytest.raises(ValueError, match="holds another evaluation: .*seed"):
        evaluate_model(model, x, y, batch_size=8, resume=tmp_path / "r", seed=1, **KW)
    with pytest.raises(ValueError, match="needs resume=DIR"):
        evaluate_model(model, x, y, cluster=_Cluster("worker", 0, 2), **KW)


class _Cluster(tf.distribute.cluster_resolver.SimpleClusterResolver):
    def __init__(self, kind, index, workers, chief=0):
        spec = {"worker": [f"localhost:{i}" for i in range(workers)]}
        if chief:
            spec["chief"] = ["localhost:99"]
        super().__init__(tf.train.ClusterSpec(spec), task_type=kind, task_id=index)


def test_shards_cover_every_chunk_once():
    assert shard_of(None) == Shard(0, 1)
    assert shard_of(_Cluster("worker", 1, 3)) == Shard(1, 3)
    assert shard_of(_Cluster("chief", 0, 2, chief=1)) == Shard(0, 3)
    assert shard_of(_Cluster("worker", 0, 2, chief=1)) == Shard(1, 3)
    with pytest.raises(ValueError, match="'ps'"):
        shard_of(_Cluster("ps", 0, 2))
    with pytest.raises(ValueError, match="task=3"):
        Shard(3, 2)
    owned = sorted(c for t in range(3) for c in owned_chunks(10, Shard(t, 3)))
    assert owned == list(range(10))
    assert [(s.start, s.stop) for s in chunk_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    store = ChunkStore(None, {})
    store.save(2, {"a": np.arange(3)})
    assert store.done(2) and not store.done(1)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_with_one_killed_and_restarted_give_the_one_process_json(tmp_path):
    model = _tiny_model(shape=(28, 28, 1), classes=10)
    model.save(tmp_path / "m.keras")
    base = [sys.executable, "-m", "tfrobust", "evaluate", "--model", str(tmp_path / "m.keras"),
            "--dataset", "synthetic", "--n", "96", "--batch-size", "8", "--attacks", "pgd,square",
            "--eps", "0.1", "--steps", "5", "--square-queries", "150"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    one = subprocess.run(base + ["--json", str(tmp_path / "one.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]

    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    resume = tmp_path / "resume"

    def start(index):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        return subprocess.Popen(base + ["--strategy", "multiworker", "--resume", str(resume),
                                        "--json", str(tmp_path / f"w{index}.json")],
                                env={**env, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    chief, worker = start(0), start(1)
    try:
        deadline = time.time() + 240
        while not (resume / "chunk-000001.npz").exists():  # worker 1's first chunk
            assert time.time() < deadline and worker.poll() is None, worker.stderr.read()[-2000:]
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        mine = [f"chunk-{c:06d}.npz" for c in range(1, 12, 2)]
        left = [f for f in mine if not (resume / f).exists()]
        assert left, "worker 1 finished before it was killed: nothing was resumed"
        assert chief.poll() is None  # the chief is waiting for worker 1's chunks
        worker = start(1)
        outs = [p.communicate(timeout=300) for p in (chief, worker)]
    finally:
        for p in (chief, worker):
            p.kill()
    assert chief.returncode == 0 and worker.returncode == 0, outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "the chief merges them" in outs[1][0]
    assert not (tmp_path / "w1.json").exists()
    single = json.loads((tmp_path / "one.json").read_text())
    merged = json.loads((tmp_path / "w0.json").read_text())
    assert merged["distribution"]["workers"] == 2
    assert _comparable(merged) == _comparable(single)
