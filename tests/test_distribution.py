"""`tfrobust train` under MirroredStrategy and a two-process MultiWorkerMirroredStrategy on loopback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import yaml

from tfrobust import training

RECIPE = {
    "name": "tiny_distributed",
    "dataset": "synthetic",
    "dataset_args": {"shape": [6, 6, 1], "num_classes": 3},
    "model": {"name": "linear"},
    "objective": [{"type": "cross_entropy"}, {"type": "decision_jacobian", "c": 0.5, "norm": "l2"}],
    "train": {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.5,
              "momentum": 0.0, "validation_n": 32, "n_train": 128},
}


def _weights(out: Path):
    return keras.models.load_model(out / "model.keras").classifier.get_weights()


def test_mirrored_training_equals_single_device(tmp_path):
    single = training.train(RECIPE, tmp_path / "single", strategy="none", verbose=0)
    mirrored = training.train(RECIPE, tmp_path / "mirrored", strategy="mirrored", verbose=0)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    for a, b in zip(_weights(tmp_path / "single"), _weights(tmp_path / "mirrored")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    del single


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_worker_run_matches_one_process(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    base = [sys.executable, "-m", "tfrobust", "train", "--config", str(recipe)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=180)
    assert one.returncode == 0, one.stderr[-2000:]

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            base + ["--out", str(tmp_path / f"worker{index}"), "--strategy", "multiworker"],
            env={**env, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert (tmp_path / "worker0" / "model.keras").exists()  # the chief writes the model
    assert not (tmp_path / "worker1" / "model.keras").exists()
    for a, b in zip(_weights(tmp_path / "one"), _weights(tmp_path / "worker0")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "worker0" / "history.json").read_text())
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
