"""Training recipes (YAML configs) and the ``tfrobust train`` verb.

A recipe names a dataset, a classifier from the zoo, an objective (a list of
terms) and the optimiser settings::

    name: mnist_jacobian
    dataset: mnist
    model: {name: mnist_cnn}
    objective:
      - {type: cross_entropy}
      - {type: decision_jacobian, c: 500, norm: l2}
    train: {epochs: 10, batch_size: 128, optimizer: adam, learning_rate: 0.001}

``tfrobust train`` writes ``model.keras``, ``history.json``, ``tensorboard/``
and ``checkpoints/``; with ``keep_best: val_robust_accuracy_<attack>`` (a key
the recipe's ``monitor:`` puts in the epoch logs) also ``best.keras``, the
model of the epoch with the highest value so far, written atomically. Checkpoints are full ``.keras`` files written to a
temporary name and renamed at every epoch end, so a killed run loses at most
the current epoch and never leaves a corrupt checkpoint; rerunning the same
command resumes from the last one.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml

from tfrobust import data, models, recipes
from tfrobust.names import STRATEGIES
from tfrobust.utils import atomic_path, atomic_write_text
from tfrobust import objectives as objectives_module
from tfrobust.attacks import as_attack
from tfrobust.callbacks import CLEAN_ACCURACY_KEY, RobustnessMonitor, robust_accuracy_key

__all__ = [
    "load_config",
    "validate_config",
    "build_objective",
    "build_strategy",
    "train",
    "config_dirs",
    "atomic_write_text",
    "CheckpointAndHistory",
    "AtomicBestCheckpoint",
    "keep_best_keys",
    "epoch_batches",
    "train_seconds",
]


_DEFAULT_TRAIN = {
    "epochs": 10,
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "momentum": 0.9,
    "weight_decay": None,
    "n_train": None,
    "validation_n": 1000,
    "seed": 0,
    "eps_warmup_epochs": 0,
    "penalty_warmup_epochs": 0,
    "lr_schedule": "constant",
}

LR_SCHEDULES = ("constant", "cosine")
"""``train.lr_schedule``: a constant rate, or cosine decay from ``learning_rate`` to 0 over all epochs."""


def config_dirs() -> list[Path]:
    """Where recipe names are looked up: ``./training/configs``, then the packaged recipes."""
    return [Path.cwd() / "training" / "configs", recipes.RECIPE_DIR]


def load_config(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a recipe; a bare name is looked up in :func:`config_dirs`.

    Raises:
        FileNotFoundError: naming the recipe and where it was looked for.
        ValueError: naming a bad field.
    """
    path = Path(path_or_name)
    if not path.exists():
        for folder in config_dirs():
            for candidate in (folder / path, folder / f"{path}.yaml"):
                if candidate.exists():
                    path = candidate
                    break
            if path.exists():
                break
    if not path.exists():
        raise FileNotFoundError(f"config {str(path_or_name)!r} not found (looked in "
                                f"{', '.join(str(d) for d in config_dirs())})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config {str(path)!r} is not valid YAML: {err}") from None
    if isinstance(config, dict):
        config.setdefault("name", path.stem)
    return validate_config(config, where=str(path))


def validate_config(config: dict, where: str = "config") -> dict[str, Any]:
    """Fills in defaults and checks a recipe dict; returns a new dict.

    Raises:
        ValueError: naming the bad field.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config {where!r} must be a mapping")
    config = copy.deepcopy(config)
    config.setdefault("name", "recipe")
    for key in ("dataset", "model", "objective"):
        if key not in config:
            raise ValueError(f"config {where!r} lacks the field {key!r}")
    config["train"] = {**_DEFAULT_TRAIN, **(config.get("train") or {})}
    unknown = set(config["train"]) - set(_DEFAULT_TRAIN)
    if unknown:
        raise ValueError(f"config {where!r}: unknown train settings {sorted(unknown)}")
    for key in ("eps_warmup_epochs", "penalty_warmup_epochs"):
        warmup = config["train"][key]
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not warmup >= 0:
            raise ValueError(f"config {where!r}: {key}={warmup!r} must be a non-negative number")
    if config["train"]["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"config {where!r}: lr_schedule={config['train']['lr_schedule']!r} is unknown; "
                         f"choose one of {LR_SCHEDULES}")
    if config["dataset"] not in data.DATASETS:
        raise ValueError(f"config {where!r}: dataset {config['dataset']!r} is unknown; "
                         f"choose one of {data.DATASETS}")
    build_objective(config["objective"])  # fail early on a bad objective
    if config.get("monitor") is not None:
        _check_monitor(config["monitor"], where)
    keep_best = config.get("keep_best")
    if keep_best is not None and not config["train"]["validation_n"]:
        raise ValueError(f"config {where!r}: keep_best={keep_best!r} needs validation data; "
                         f"validation_n={config['train']['validation_n']!r}")
    if keep_best is not None and keep_best not in keep_best_keys(config):
        raise ValueError(f"config {where!r}: keep_best={keep_best!r} is not a key the monitor logs; "
                         f"choose one of {keep_best_keys(config)} (add a monitor: block with the attack)")
    return config


def _check_monitor(monitor, where: str) -> None:
    """Raises ValueError naming what is wrong with a recipe's ``monitor:`` block."""
    if not isinstance(monitor, dict) or not isinstance(monitor.get("attacks"), dict):
        raise ValueError(f"config {where!r}: monitor must be a mapping with an 'attacks' mapping, "
                         f"e.g. {{attacks: {{pgd_0.3: {{name: pgd, eps: 0.3}}}}, n: 500}}")
    unknown = set(monitor) - {"attacks", "n", "every_n_epochs", "batch_size", "surface_eps"}
    if unknown:
        raise ValueError(f"config {where!r}: unknown monitor settings {sorted(unknown)}")
    for name, attack in monitor["attacks"].items():
        try:
            as_attack(attack)
        except ValueError as err:
            raise ValueError(f"config {where!r}: monitor attack {name!r}: {err}") from None


def keep_best_keys(config: dict) -> list[str]:
    """The values ``keep_best`` may select on: the epoch-log keys of the recipe's monitor
    (``val_clean_accuracy``, ``val_robust_accuracy_<attack>``); none without a ``monitor:``."""
    monitor = config.get("monitor")
    if not isinstance(monitor, dict) or not isinstance(monitor.get("attacks"), dict):
        return []
    return [CLEAN_ACCURACY_KEY] + [robust_accuracy_key(name) for name in monitor["attacks"]]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _term_types() -> dict[str, type]:
    table = {}
    for name in objectives_module.__all__:
        obj = getattr(objectives_module, name)
        if isinstance(obj, type) and issubclass(obj, objectives_module.Term) \
                and obj is not objectives_module.Term:
            table[_snake(name)] = obj
    return table


def build_objective(spec: list[dict]) -> objectives_module.Objective:
    """Builds an objective from a recipe's list of ``{type: ..., **kwargs}``.

    Raises:
        ValueError: naming an unknown term type or a bad argument.
    """
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"objective must be a non-empty list of terms, got {spec!r}")
    types = _term_types()
    terms = []
    for item in spec:
        item = dict(item)
        kind = item.pop("type", None)
        if kind not in types:
            raise ValueError(f"objective term type {kind!r} is unknown; choose one of {sorted(types)}")
        try:
            terms.append(types[kind](**item))
        except TypeError as err:
            raise ValueError(f"objective term {kind!r}: {err}") from None
    return objectives_module.Objective(terms)


def build_strategy(name: str) -> tf.distribute.Strategy:
    """``none`` (default strategy), ``mirrored`` (all local GPUs, else all logical CPUs) or
    ``multiworker`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``)."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # CPU replicas: reduce through one device. The default collective ops can mix up
        # instance keys when several strategies live in one process (seen in the tests).
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy {name!r} is unknown; choose one of {STRATEGIES}")


def _optimizer(settings: dict, total_steps: int = 1) -> keras.optimizers.Optimizer:
    name = str(settings["optimizer"]).lower()
    lr = float(settings["learning_rate"])
    if settings.get("lr_schedule", "constant") == "cosine":
        # A function of the optimiser's step count, which the checkpoint keeps: resuming continues the curve.
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(int(total_steps), 1))
    wd = settings.get("weight_decay")
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(settings["momentum"]), weight_decay=wd)
    raise ValueError(f"optimizer {name!r} is unknown; choose 'adam' or 'sgd'")


def _temporary_path(path: Path) -> Path:
    return path.parent / f".{path.stem}.tmp.keras"


def _atomic_save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


class AtomicBestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint(save_best_only=True, mode="max")``, writing ``path`` atomically.

    Keras selects the epochs (a new maximum of ``monitor`` in the epoch logs; a value equal to
    the best never is) and writes the model to a temporary name beside ``path``; an epoch that
    logs NaN is passed over here (Keras would take a first NaN as its best, and no later value
    beats NaN, so nothing after it would be kept);
    this renames it over ``path``, as every checkpoint of :func:`train` is written, so a crash
    never leaves a half-written ``best.keras``. ``initial_value_threshold``: the best value of
    an earlier run being resumed (only a better epoch replaces its file).
    """

    def __init__(self, path: str | os.PathLike, monitor: str, initial_value_threshold: float | None = None):
        self.final_path = Path(path)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(_temporary_path(self.final_path)), monitor=monitor, mode="max",
                         save_best_only=True, initial_value_threshold=initial_value_threshold)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if isinstance(value, (float, np.floating)) and np.isnan(value):
            return
        super().on_epoch_end(epoch, logs)
        written = Path(self.filepath)
        if written.exists():
            os.replace(written, self.final_path)


def is_chief() -> bool:
    cfg = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = cfg.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cfg.get("cluster", {}))


class CheckpointAndHistory(keras.callbacks.Callback):
    """Saves a full checkpoint and the history at every epoch end, atomically.

    ``checkpoints/last.keras`` holds the model with its optimiser state;
    ``checkpoints/state.json`` the number of finished epochs, the history so
    far and each epoch's wall seconds (so the training time of a run that was
    stopped and resumed is still known: :func:`train_seconds`). Only the chief
    writes under multi-worker training.
    """

    def __init__(self, out_dir: Path, history: dict[str, list], write: bool = True,
                 epoch_seconds: list[float] | None = None):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.history = history
        self.write = write
        self.epoch_seconds: list[float | None] = list(epoch_seconds or [])
        self._started: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, [])
            del self.history[key][epoch:]
            self.history[key].append(float(value))
        del self.epoch_seconds[epoch:]
        self.epoch_seconds.append(round(time.monotonic() - self._started, 2) if self._started else None)
        if not self.write:
            return
        _atomic_save_model(self.model, self.out_dir / "checkpoints" / "last.keras")
        state = {"epochs_done": epoch + 1, "history": self.history, "epoch_seconds": self.epoch_seconds}
        atomic_write_text(self.out_dir / "checkpoints" / "state.json", json.dumps(state))
        atomic_write_text(self.out_dir / "history.json", json.dumps(self.history, indent=1))


def train_seconds(out_dir: str | os.PathLike) -> float | None:
    """Wall seconds of a run's epochs (fit's validation included), summed over restarts.

    Read from ``out_dir/checkpoints/state.json``; ``None`` if the run has no
    state or an epoch's time is unknown (checkpoints written before the times
    were recorded).
    """
    path = Path(out_dir) / "checkpoints" / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    seconds = state.get("epoch_seconds") or []
    if len(seconds) != int(state["epochs_done"]) or any(s is None for s in seconds):
        return None
    return round(float(sum(seconds)), 1)


def epoch_batches(x, y, batch_size: int, *, seed: int, first_epoch: int, epochs: int) -> tf.data.Dataset:
    """Batches for epochs ``first_epoch .. epochs-1``, each a fresh permutation.

    The permutation of epoch ``e`` is a stateless function of ``(seed, e)``, so
    it is the same on one device, under any distribution strategy, and after a
    resume (``tf.data``'s seeded ``shuffle`` is not: its order changes when a
    strategy rewrites the pipeline). Batches never cross an epoch boundary.
    """
    n = len(x)
    images, labels = tf.constant(x), tf.constant(y)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _load_split(config: dict, split: str, n: int | None):
    return data.load(config["dataset"], split, n, **(config.get("dataset_args") or {}))


def _train_and_validation(config: dict) -> tuple[Any, Any, Any, Any]:
    """``(x_train, y_train, x_val, y_val)``: the recipe's training split less its last ``validation_n``
    examples (the validation set), cut to ``n_train`` when set."""
    settings = config["train"]
    x_train, y_train = _load_split(config, "train", None)
    n_val = int(settings["validation_n"] or 0)
    n_train = settings["n_train"]
    if n_val >= len(x_train):
        raise ValueError(f"validation_n={n_val} must be smaller than the training split ({len(x_train)})")
    x_val, y_val = x_train[len(x_train) - n_val:], y_train[len(y_train) - n_val:]
    x_train, y_train = x_train[:len(x_train) - n_val], y_train[:len(y_train) - n_val]
    if n_train:
        x_train, y_train = x_train[:int(n_train)], y_train[:int(n_train)]
    return x_train, y_train, x_val, y_val


def _new_model(config: dict, input_shape: tuple, steps_per_epoch: int) -> models.RobustModel:
    """The recipe's compiled, freshly initialised (from its seed) ``RobustModel`` on ``input_shape``."""
    settings = config["train"]
    spec = dict(config["model"])
    keras.utils.set_random_seed(int(settings["seed"]))  # same initial weights under any strategy
    num_classes = ((config.get("dataset_args") or {}).get("num_classes")
                   or data.dataset_info(config["dataset"])["num_classes"])
    classifier = models.build_classifier(spec.pop("name"), input_shape, int(num_classes), **spec)
    model = models.RobustModel(
        classifier, build_objective(config["objective"]), clip=tuple(config.get("clip", (0.0, 1.0))),
        eps_warmup_steps=int(round(float(settings["eps_warmup_epochs"]) * steps_per_epoch)),
        penalty_warmup_steps=int(round(float(settings["penalty_warmup_epochs"]) * steps_per_epoch)))
    model.compile(optimizer=_optimizer(settings, int(settings["epochs"]) * steps_per_epoch),
                  metrics=["accuracy"])
    return model


def _callbacks(config: dict, out: Path, tb_dir: Path, model: keras.Model, x_val, y_val, history: dict,
               epoch_seconds: list, *, chief: bool, monitoring: bool) -> list:
    """The ``fit`` callbacks: the robustness monitor (when ``monitoring``), checkpoint and history,
    TensorBoard, NaN termination and (``keep_best`` with ``monitoring``) the best checkpoint."""
    callbacks = []
    if monitoring:
        monitor = config["monitor"]
        # Robust accuracy, margin and gradient-norm histograms on a fixed validation subset. First:
        # Keras calls callbacks in list order, and the ones below read the accuracies it logs.
        callbacks.append(RobustnessMonitor(
            x_val, y_val, {k: as_attack(v) for k, v in monitor["attacks"].items()},
            log_dir=str(tb_dir / "robustness"), n=int(monitor.get("n", 500)),
            every_n_epochs=int(monitor.get("every_n_epochs", 1)),
            batch_size=int(monitor.get("batch_size", 256)), clip=model.clip,
            surface_eps=monitor.get("surface_eps")))
    callbacks += [
        CheckpointAndHistory(out, history, write=chief, epoch_seconds=epoch_seconds),
        keras.callbacks.TensorBoard(log_dir=str(tb_dir)),
        keras.callbacks.TerminateOnNaN(),
    ]
    keep_best = config.get("keep_best")
    if keep_best and monitoring:  # only the chief writes, and only the monitor logs the key
        earlier = [v for v in history.get(keep_best, []) if v == v]  # a resumed run's values, no NaN
        callbacks.append(AtomicBestCheckpoint(out / "best.keras", keep_best,
                                              initial_value_threshold=max(earlier) if earlier else None))
    return callbacks


def train(config: dict | str, out_dir: str | os.PathLike, *, epochs: int | None = None,
          strategy: str = "none", verbose: int | str = "auto") -> keras.Model:
    """Trains one recipe, resuming from ``out_dir/checkpoints`` when present.

    Args:
        config: a recipe dict or its path/name.
        out_dir: output folder.
        epochs: overrides the recipe's epoch count.
        strategy: ``none``, ``mirrored`` or ``multiworker``.
        verbose: Keras' ``fit`` verbosity (progress bar).

    Returns:
        The trained :class:`~tfrobust.models.RobustModel`.
    """
    config = validate_config(config) if isinstance(config, dict) else load_config(config)
    settings = config["train"]
    if epochs is not None:
        if int(epochs) < 1:
            raise ValueError(f"epochs={epochs!r} must be >= 1")
        settings["epochs"] = int(epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chief = is_chief()
    keras.utils.set_random_seed(int(settings["seed"]))

    x_train, y_train, x_val, y_val = _train_and_validation(config)
    n_val = int(settings["validation_n"] or 0)

    batch = int(settings["batch_size"])
    steps_per_epoch = -(-len(x_train) // batch)
    dist = build_strategy(strategy)
    ckpt = out / "checkpoints" / "last.keras"
    state_path = out / "checkpoints" / "state.json"
    history: dict[str, list] = {}
    epoch_seconds: list = []
    initial_epoch = 0
    with dist.scope():
        if ckpt.exists() and state_path.exists():
            state = json.loads(state_path.read_text())
            model = keras.models.load_model(ckpt)
            initial_epoch = int(state["epochs_done"])
            history = state["history"]
            epoch_seconds = state.get("epoch_seconds", [])
            print(f"resuming {config['name']} from epoch {initial_epoch} ({ckpt})", file=sys.stderr)
        else:
            model = _new_model(config, x_train.shape[1:], steps_per_epoch)

    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    train_ds = epoch_batches(x_train, y_train, batch, seed=int(settings["seed"]),
                             first_epoch=initial_epoch, epochs=int(settings["epochs"]))
    val_ds = data.make_dataset(x_val, y_val, batch) if n_val else None
    tb_dir = out / "tensorboard" if chief else Path(tempfile.mkdtemp(prefix="tfrobust_tb_"))
    monitoring = bool(config.get("monitor") and chief and n_val)
    callbacks = _callbacks(config, out, tb_dir, model, x_val, y_val, history, epoch_seconds, chief=chief,
                           monitoring=monitoring)
    if initial_epoch < settings["epochs"]:
        model.fit(train_ds, validation_data=val_ds, epochs=int(settings["epochs"]),
                  steps_per_epoch=steps_per_epoch,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    if chief:
        _atomic_save_model(model, out / "model.keras")
        atomic_write_text(out / "history.json", json.dumps(history, indent=1))
    return model
