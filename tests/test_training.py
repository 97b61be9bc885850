"""Recipes, the train verb, and resuming after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tfrobust import objectives as O
from tfrobust import training
from tfrobust.cli import main

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ["mnist_natural", "mnist_jacobian", "mnist_input_gradient", "mnist_adv_train",
            "mnist_pgd_at", "mnist_jacobian_at"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "training" / "configs").glob("*.yaml")))
def test_every_shipped_recipe_loads(name):
    config = training.load_config(name)
    assert config["name"] == name
    assert isinstance(training.build_objective(config["objective"]), O.Objective)


def test_required_recipes_exist_with_the_papers_settings():
    for name in REQUIRED:
        training.load_config(name)
    jac = training.build_objective(training.load_config("mnist_jacobian")["objective"])
    assert [type(t) for t in jac.terms] == [O.CrossEntropy, O.DecisionJacobian]
    adv = training.build_objective(training.load_config("mnist_adv_train")["objective"]).terms[0]
    assert (adv.attack.name, adv.attack.steps, adv.attack.step_size) == ("cw", 10, 0.1)
    both = training.build_objective(training.load_config("mnist_jacobian_at")["objective"])
    assert {type(t) for t in both.terms} == {O.AdversarialTraining, O.DecisionJacobian}


@pytest.mark.parametrize("config,match", [
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}}, "'objective'"),
    ({"dataset": "imagenet", "model": {"name": "mnist_cnn"}, "objective": [{"type": "cross_entropy"}]},
     "'imagenet'"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}, "objective": [{"type": "magic"}]}, "'magic'"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"},
      "objective": [{"type": "decision_jacobian", "c": -5}]}, "c=-5"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}, "objective": [{"type": "cross_entropy"}],
      "train": {"epochz": 3}}, "epochz"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}, "objective": [{"type": "cross_entropy"}],
      "train": {"eps_warmup_epochs": -1}}, "eps_warmup_epochs=-1"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}, "objective": [{"type": "cross_entropy"}],
      "train": {"penalty_warmup_epochs": "two"}}, "penalty_warmup_epochs='two'"),
    ({"dataset": "mnist", "model": {"name": "mnist_cnn"}, "objective": [{"type": "cross_entropy"}],
      "train": {"lr_schedule": "step"}}, "lr_schedule='step'"),
])
def test_bad_recipes_name_the_bad_field(tmp_path, config, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=match):
        training.load_config(path)


def test_eps_warmup_epochs_become_optimizer_steps(tmp_path):
    config = training.load_config("digits_tiny")
    config.pop("monitor")
    config["train"].update(epochs=1, n_train=256, eps_warmup_epochs=1.5, penalty_warmup_epochs=0.5)
    model = training.train(config, tmp_path, verbose=0)
    assert model.eps_warmup_steps == 6  # 1.5 epochs of ceil(256 / 64) = 4 steps
    assert model.penalty_warmup_steps == 2


def test_train_seconds_is_unknown_without_every_epoch_time(tmp_path):
    assert training.train_seconds(tmp_path) is None  # no run here
    (tmp_path / "checkpoints").mkdir()
    state = {"epochs_done": 2, "history": {"loss": [1.0, 0.5]}}  # written before times were recorded
    (tmp_path / "checkpoints" / "state.json").write_text(json.dumps(state))
    assert training.train_seconds(tmp_path) is None
    state["epoch_seconds"] = [1.25, 2.5]
    (tmp_path / "checkpoints" / "state.json").write_text(json.dumps(state))
    assert training.train_seconds(tmp_path) == 3.8  # rounded to 0.1 s


def test_cosine_schedule_decays_to_zero_over_all_epochs(tmp_path):
    config = training.load_config("digits_tiny")
    config.pop("monitor")
    config["train"].update(epochs=2, n_train=256, lr_schedule="cosine", learning_rate=0.004)
    model = training.train(config, tmp_path, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 8  # 2 epochs of ceil(256 / 64) steps
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.0, abs=1e-9)
    schedule = model.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["decay_steps"] == 8 and schedule["initial_learning_rate"] == pytest.approx(0.004)
    # The checkpoint keeps the schedule: a resumed run continues on the same curve.
    again = training.train(config, tmp_path, epochs=3, verbose=0)
    assert again.optimizer.get_config()["learning_rate"]["config"]["decay_steps"] == 8


def test_cli_train_writes_model_history_tensorboard(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "digits_tiny", "--out", str(out), "--epochs", "2"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and "jacobian_penalty" in history and "val_accuracy" in history
    model = keras.models.load_model(out / "model.keras")
    assert type(model.objective.terms[1]) is O.DecisionJacobian
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    # The recipe's monitor logged robust accuracy to TensorBoard.
    import tensorflow as tf
    tags = set()
    for f in (out / "tensorboard" / "robustness").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            tags |= {v.tag for v in event.summary.value}
    assert {"robustness/accuracy/fgsm_0.1", "robustness/margin", "robustness/grad_norm",
            "robustness/decision_surface"} <= tags
    # Asking for more epochs resumes from the checkpoint instead of starting over.
    assert main(["train", "--config", "digits_tiny", "--out", str(out), "--epochs", "3"]) == 0
    again = json.loads((out / "history.json").read_text())
    assert len(again["loss"]) == 3 and again["loss"][:2] == history["loss"]


def test_cli_train_bad_input(tmp_path, capsys):
    assert main(["train", "--config", "no_such_recipe", "--out", str(tmp_path)]) == 2
    assert "'no_such_recipe'" in capsys.readouterr().err
    assert main(["train", "--config", "digits_tiny", "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_sigkill_mid_training_then_resume(tmp_path):
    """Kill `tfrobust train` after its second checkpoint; the rerun resumes and finishes."""
    config = yaml.safe_load((REPO / "training" / "configs" / "digits_tiny.yaml").read_text())
    # Ten epochs of a few hundred milliseconds each (a checkpoint is written after every one) leave
    # the 50 ms poll below eight epochs to kill in; 40 took two minutes of the suite for no more cover.
    config["train"]["epochs"] = EPOCHS = 10
    config.pop("monitor")  # keep the short epochs short
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfrobust", "train", "--config", str(path), "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state_path = out / "checkpoints" / "state.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if state_path.exists() and json.loads(state_path.read_text())["epochs_done"] >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = json.loads(state_path.read_text())
    assert 2 <= killed["epochs_done"] < EPOCHS, "the run should have been killed mid-way"
    assert not (out / "model.keras").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    history = json.loads((out / "history.json").read_text())
    n = killed["epochs_done"]
    assert len(history["loss"]) == EPOCHS
    assert history["loss"][:n] == killed["history"]["loss"]  # nothing before the kill was lost
    # The epochs' times survive the kill too: the training time is the sum over both processes.
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch_seconds"][:n] == killed["epoch_seconds"] and len(state["epoch_seconds"]) == EPOCHS
    assert all(s > 0 for s in state["epoch_seconds"])
    assert training.train_seconds(out) == pytest.approx(sum(state["epoch_seconds"]), abs=0.1)
    resumed = keras.models.load_model(out / "model.keras").classifier
    # An uninterrupted run of the same recipe: same shapes, same history (the epoch
    # order is a function of (seed, epoch), and the optimiser state is in the checkpoint).
    straight = training.train(config, tmp_path / "straight", verbose=0).classifier
    assert [w.shape for w in resumed.get_weights()] == [w.shape for w in straight.get_weights()]
    reference = json.loads((tmp_path / "straight" / "history.json").read_text())
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=1e-3)


def test_keep_best_writes_the_model_of_the_best_robust_epoch(tmp_path):
    """keep_best: the monitor's robust accuracy is in history.json for every epoch, and best.keras
    is the model whose robust accuracy (measured again here on the monitor's subset) is the
    largest of them, also after a resumed run adds epochs."""
    from tfrobust import data, models
    from tfrobust.attacks import AttackConfig
    from tfrobust.callbacks import RobustnessMonitor
    config = yaml.safe_load((REPO / "training" / "configs" / "digits_tiny.yaml").read_text())
    config["monitor"].pop("surface_eps")
    key = "val_robust_accuracy_fgsm_0.1"
    config["keep_best"] = key
    x, y = data.load("digits", "train")
    n_val = config["train"]["validation_n"]
    subset = x[len(x) - n_val:][:config["monitor"]["n"]], y[len(y) - n_val:][:config["monitor"]["n"]]
    remeasure = RobustnessMonitor(*subset, {"fgsm_0.1": AttackConfig(name="fgsm", eps=0.1)},
                                  log_dir=str(tmp_path / "remeasure"))
    for epochs in (2, 4):
        training.train(config, tmp_path / "run", epochs=epochs, verbose=0)
        history = json.loads((tmp_path / "run" / "history.json").read_text())
        assert len(history[key]) == len(history["val_clean_accuracy"]) == epochs
        best = models.load_model(tmp_path / "run" / "best.keras")
        assert remeasure.evaluate(best)["robust_accuracy"]["fgsm_0.1"] == pytest.approx(max(history[key]), abs=1e-7)
    assert not list((tmp_path / "run").glob(".*.keras"))  # no temporary of keep_best or of the checkpoints


@pytest.mark.parametrize("change,match", [
    ({"keep_best": "val_robust_accuracy_pgd"},
     r"keep_best='val_robust_accuracy_pgd' is not a key .*'val_robust_accuracy_fgsm_0.1'"),
    ({"keep_best": "val_clean_accuracy", "train": {"validation_n": 0}}, r"validation_n=0"),
])
def test_keep_best_names_a_key_the_monitor_logs(change, match):
    config = yaml.safe_load((REPO / "training" / "configs" / "digits_tiny.yaml").read_text())
    config["keep_best"] = change["keep_best"]
    config["train"].update(change.get("train", {}))
    with pytest.raises(ValueError, match=match):
        training.validate_config(config)


def test_atomic_best_checkpoint_keeps_the_first_maximum_and_a_resumed_threshold(tmp_path):
    """Epoch values 0.3, 0.5, NaN, 0.4, 0.5, 0.6: best.keras holds the epoch-1 weights until epoch
    5; with a resumed run's threshold 0.55 nothing before 0.6 replaces it; no temporary is left."""
    from tfrobust import models
    model = models.RobustModel(models.linear_classifier((2, 2, 1), 2))
    kernel = model.classifier.layers[-1].kernel

    def run(values, threshold=None):
        path = tmp_path / f"best_{len(list(tmp_path.glob('best_*.keras')))}.keras"
        callback = training.AtomicBestCheckpoint(path, "val_robust_accuracy_x", initial_value_threshold=threshold)
        callback.set_model(model)
        saved = []
        for epoch, value in enumerate(values):
            kernel.assign(np.full(kernel.shape, float(epoch), np.float32))  # the epoch's weights
            callback.on_epoch_end(epoch, {"val_robust_accuracy_x": value})
            saved.append(float(models.load_model(path).classifier.layers[-1].kernel.numpy()[0, 0])
                         if path.exists() else None)
        assert not list(tmp_path.glob(".*.tmp.keras"))
        return saved

    assert run([0.3, 0.5, float("nan"), 0.4, 0.5, 0.6]) == [0.0, 1.0, 1.0, 1.0, 1.0, 5.0]
    # A NaN first is passed over (Keras alone would keep it as its best, and nothing after it).
    assert run([float("nan"), 0.3, 0.5, 0.4]) == [None, 1.0, 2.0, 2.0]
    assert run([0.3, 0.5, 0.6], threshold=0.55) == [None, None, 2.0]
