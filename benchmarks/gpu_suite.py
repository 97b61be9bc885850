"""The GPU suite (issue #14): one JSON of the checks that need an accelerator, runnable on CPU at tiny size.

Sections, each timed and written as it finishes:

1. ``step_time``: median training-step time of natural, dual-norm decision Jacobian, PGD-10 AT,
   TRADES-10 and EMR on the MNIST CNN, for each of (jit_compile off/on) x (float32 / mixed_float16),
   and each objective's ratio to the natural step of the same variant.
2. ``pgd_throughput``: compiled PGD-10 images/s against the limit (10 bare compiled
   forward+backward passes), as ``benchmarks/attack_speed.py`` measures it.
3. ``mirrored``: natural-training throughput under ``MirroredStrategy`` over every GPU against one
   GPU, and the scaling efficiency ``(all / one) / n_gpus`` (on CPU: one device, efficiency 1 by
   construction; it proves the code path only).
4. ``mirrored_evaluation``: ``evaluate_model`` (PGD-10 and APGD-CE) under ``MirroredStrategy`` over
   every GPU against one GPU: examples/s, scaling efficiency, and whether the two reports are equal
   apart from timing (they must be: the attacks' random numbers are keyed by example).
5. ``cifar_smoke``: the ``cifar10_wrn_at_emr`` recipe (WRN-34-10, PGD-10 AT + EMR) trained through
   ``tfrobust.training.train`` on synthetic 32x32x3 data for a few hundred steps (``--size tiny``:
   a WRN-10-1 for 4 steps), with its loss and wall time.

``--size full`` is for a GPU machine (sized to stay under 8 minutes; not yet run on one);
``--size tiny`` runs everything in about a minute on 2 CPU cores, which CI does
(``tests/test_gpu_suite.py``). ::

    python benchmarks/gpu_suite.py --size full --out benchmarks/results/gpu_suite.json
    python benchmarks/gpu_suite.py --size tiny --out /tmp/gpu_suite.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, write_result  # noqa: E402

from tfrobust import attacks, models, training  # noqa: E402
from tfrobust import objectives as O  # noqa: E402

SIZES = {
    "tiny": {"width": 0.25, "batch": 16, "repeats": 3, "warmup": 1, "pgd_batch": 16, "mirrored_steps": 3,
             "cifar_steps": 4, "cifar_batch": 8, "cifar_model": {"name": "wide_resnet", "depth": 10, "widen": 1}},
    "full": {"width": 1.0, "batch": 256, "repeats": 20, "warmup": 3, "pgd_batch": 1024, "mirrored_steps": 30,
             "cifar_steps": 300, "cifar_batch": 128, "cifar_model": {"name": "wrn_34_10"}},
}

EPS = 0.3
PGD10 = attacks.AttackConfig(name="pgd", eps=EPS, steps=10, random_start=True)
OBJECTIVES = {
    "natural": lambda: O.CrossEntropy(),
    "jacobian_dual": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.01, threat="linf"),
    "pgd_at_10": lambda: O.AdversarialTraining(PGD10),
    "trades_10": lambda: O.Trades(beta=6.0, attack=O.KLAttack(eps=EPS, steps=10, step_size=2.5 * EPS / 10)),
    "emr_clean": lambda: O.CrossEntropy() + O.EffectiveMargin(lam=3 / 128, temperature=40.0),
}


def _median_step(model, x, y, repeats, warmup) -> float:
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_times(size: dict) -> dict:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(size["batch"], 28, 28, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size["batch"]).astype("int32"))
    out = {}
    for policy in ("float32", "mixed_float16"):
        for jit in (False, True):
            keras.mixed_precision.set_global_policy(policy)
            try:
                variant = f"{policy}{'_jit' if jit else ''}"
                seconds = {}
                for name, make in OBJECTIVES.items():
                    keras.utils.set_random_seed(0)
                    model = models.RobustModel(models.mnist_cnn(width=size["width"]), make())
                    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit)
                    try:
                        seconds[name] = _median_step(model, x, y, size["repeats"], size["warmup"])
                    except Exception as err:  # noqa: BLE001  (an XLA gap is a result, not a crash)
                        seconds[name] = None
                        out.setdefault("errors", {})[f"{variant}/{name}"] = f"{type(err).__name__}: {err}"[:300]
                base = seconds["natural"]
                out[variant] = {"median_seconds": {k: (round(v, 5) if v else None) for k, v in seconds.items()},
                                "ratio_to_natural": {k: (round(v / base, 3) if v and base else None)
                                                     for k, v in seconds.items()}}
            finally:
                keras.mixed_precision.set_global_policy("float32")
    return out


def pgd_throughput(size: dict) -> dict:
    keras.utils.set_random_seed(0)
    clf = models.mnist_cnn(width=size["width"])
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(size=(size["pgd_batch"], 28, 28, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size["pgd_batch"]).astype("int32"))

    @tf.function
    def pgd(xb, yb):
        return PGD10(clf, xb, yb)

    @tf.function
    def grad(xb, yb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, clf(xb, training=False)))
        return tape.gradient(loss, xb)

    def limit(xb, yb):
        g = None
        for _ in range(10):
            g = grad(xb, yb)
        return g

    times = {"pgd": [], "limit": []}
    for fn in (pgd, limit):
        fn(x, y).numpy()
    for _ in range(size["repeats"]):
        for fn, key in ((pgd, "pgd"), (limit, "limit")):
            t = time.perf_counter()
            fn(x, y).numpy()
            times[key].append(time.perf_counter() - t)
    ips = {k: size["pgd_batch"] / statistics.median(v) for k, v in times.items()}
    return {"batch": size["pgd_batch"], "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "pgd_over_limit": round(ips["pgd"] / ips["limit"], 3)}


def mirrored(size: dict) -> dict:
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or ["/cpu:0"]
    rng = np.random.default_rng(2)
    per_device = size["batch"]

    def throughput(device_list) -> float:
        strategy = tf.distribute.MirroredStrategy(devices=device_list)
        batch = per_device * len(device_list)
        x = rng.uniform(size=(batch * size["mirrored_steps"], 28, 28, 1)).astype("float32")
        y = rng.integers(0, 10, len(x)).astype("int32")
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = models.RobustModel(models.mnist_cnn(width=size["width"]), O.CrossEntropy())
            model.compile(optimizer=keras.optimizers.SGD(0.01))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        model.fit(ds.take(1), epochs=1, verbose=0)  # trace
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        return len(x) / (time.perf_counter() - t)

    one = throughput(devices[:1])
    everyone = throughput(devices) if len(devices) > 1 else one
    return {"devices": devices, "per_device_batch": per_device,
            "images_per_s": {"one": round(one, 1), "all": round(everyone, 1)},
            "scaling_efficiency": round(everyone / one / len(devices), 3)}


def mirrored_evaluation(size: dict) -> dict:
    from tfrobust.attacks import Budget  # noqa: E402
    from tfrobust.evaluation import evaluate_model  # noqa: E402
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or ["/cpu:0"]
    rng = np.random.default_rng(3)
    n = size["pgd_batch"] * 4
    x = rng.uniform(size=(n, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n)

    def run(device_list):
        strategy = tf.distribute.MirroredStrategy(devices=device_list,
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = models.mnist_cnn(width=size["width"])
        kw = dict(attacks=["pgd", "apgd-ce"], eps="0.3", budget=Budget(steps=10, apgd_steps=10), sanity=False,
                  progress=False,
                  batch_size=size["pgd_batch"] * len(device_list), strategy=strategy)
        evaluate_model(model, x[: kw["batch_size"]], y[: kw["batch_size"]], **kw)  # trace
        t = time.perf_counter()
        report = evaluate_model(model, x, y, **kw)
        return report, n / (time.perf_counter() - t)

    one, one_rate = run(devices[:1])
    everyone, all_rate = run(devices) if len(devices) > 1 else (one, one_rate)
    same = {k: v for k, v in one.items() if k not in ("seconds", "distribution")} == {
        k: v for k, v in everyone.items() if k not in ("seconds", "distribution")}
    return {"devices": devices, "n": n, "examples_per_s": {"one": round(one_rate, 1), "all": round(all_rate, 1)},
            "scaling_efficiency": round(all_rate / one_rate / len(devices), 3), "same_report": same}


def cifar_smoke(size: dict) -> dict:
    config = training.load_config("cifar10_wrn_at_emr")
    config["dataset"] = "synthetic"
    config["dataset_args"] = {"shape": [32, 32, 3], "num_classes": 10}
    config["model"] = dict(size["cifar_model"])
    config["train"].update(epochs=1, batch_size=size["cifar_batch"], validation_n=size["cifar_batch"],
                           n_train=size["cifar_steps"] * size["cifar_batch"])
    config.pop("monitor", None)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as out:
        t = time.perf_counter()
        training.train(config, out, verbose=0)
        seconds = time.perf_counter() - t
        history = __import__("json").loads(open(os.path.join(out, "history.json")).read())
    return {"model": size["cifar_model"], "steps": size["cifar_steps"], "batch": size["cifar_batch"],
            "seconds": round(seconds, 1), "steps_per_s": round(size["cifar_steps"] / seconds, 3),
            "final_loss": {k: v[-1] for k, v in (history.get("history", history)).items() if "loss" in k}}


SECTIONS = {"step_time": step_times, "pgd_throughput": pgd_throughput, "mirrored": mirrored,
            "mirrored_evaluation": mirrored_evaluation, "cifar_smoke": cifar_smoke}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", default="benchmarks/results/gpu_suite.json")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    for s in sections:
        if s not in SECTIONS:
            parser.error(f"section {s!r} is unknown; choose from {list(SECTIONS)}")
    size = SIZES[args.size]
    command = f"python benchmarks/gpu_suite.py --size {args.size} --out {args.out}" + (
        f" --sections {args.sections}" if sections != list(SECTIONS) else "")
    result = {"hardware": hardware(), "command": command, "size": args.size, "settings": size,
              "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}, "seconds": {}}
    start = time.perf_counter()
    for name in sections:
        t = time.perf_counter()
        result[name] = SECTIONS[name](size)
        result["seconds"][name] = round(time.perf_counter() - t, 1)
        result["total_seconds"] = round(time.perf_counter() - start, 1)
        write_result(args.out, result, command)  # after every section: a stopped run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
