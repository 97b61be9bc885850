"""Evaluation scaling: ``tfrobust evaluate`` on 2 workers of 1 thread against 1 worker of 1 thread.

Saves the decision-surface paper's MNIST CNN with random weights (PGD's cost does not depend on
the weights: a fixed number of steps, no early stop), then times, on the same machine and in one
run, ``tfrobust evaluate --attacks pgd`` on the first ``--n`` MNIST test images:

* one process, ``TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1``, pinned to core 0;
* two workers of ``--strategy multiworker`` (``TF_CONFIG`` on loopback, a shared ``--resume``
  directory), one thread each, pinned to cores 0 and 1.

The configurations alternate within each of ``--repeats`` rounds. Each run's evaluation time is
the ``seconds`` of the chief's JSON (loading the model and importing TensorFlow excluded); the
process wall time is recorded too. The figure is the ratio of the medians. Every run's
per-example results must equal the one-process run's (``identical``).

Usage::

    python benchmarks/evaluation_scaling.py                  # the committed figures
    python benchmarks/evaluation_scaling.py --n 64 --repeats 1 --out /tmp/s.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import hardware, write_result  # noqa: E402


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    return {**env, **(extra or {})}


def _comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "distribution")}


def run_once(workers: int, base: list[str], tmp: Path) -> tuple[dict, float]:
    """One evaluation on ``workers`` processes (one core each): the chief's JSON and wall time."""
    out = tmp / f"w{workers}-{time.monotonic_ns()}"
    out.mkdir()
    start = time.perf_counter()
    if workers == 1:
        cmd = ["taskset", "-c", "0", *base, "--json", str(out / "r.json")]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
        procs = []
        for i in range(workers):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            cmd = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *base, "--strategy", "multiworker",
                   "--resume", str(out / "resume"), "--json", str(out / f"r{i}.json")]
            procs.append(subprocess.Popen(cmd, env=_env({"TF_CONFIG": config}), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(err[-3000:])
        shutil.move(out / "r0.json", out / "r.json")
    wall = time.perf_counter() - start
    return json.loads((out / "r.json").read_text()), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/evaluation_scaling.json"))
    args = parser.parse_args(argv)

    import keras  # noqa: E402  (after argparse: --help stays fast)
    from tfrobust.models.zoo import mnist_cnn  # noqa: E402

    load_before = os.getloadavg()[0]  # other jobs on the machine shrink the 2-worker gain
    tmp = Path(tempfile.mkdtemp(prefix="tfrobust-scaling-"))
    try:
        keras.utils.set_random_seed(0)
        mnist_cnn().save(tmp / "cnn.keras")
        base = [sys.executable, "-m", "tfrobust", "evaluate", "--model", str(tmp / "cnn.keras"),
                "--dataset", "mnist", "--n", str(args.n), "--attacks", "pgd", "--eps", "0.3",
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--no-sanity"]
        runs: dict[int, list] = {1: [], 2: []}
        reference = None
        for _ in range(args.repeats):
            for workers in (1, 2):
                result, wall = run_once(workers, base, tmp)
                reference = reference or _comparable(result)
                runs[workers].append({"seconds": result["seconds"], "wall_s": round(wall, 2),
                                      "identical": _comparable(result) == reference})
                print(f"{workers} worker(s): evaluation {result['seconds']:.1f} s, process {wall:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = {w: statistics.median(r["seconds"] for r in rs) for w, rs in runs.items()}
    wall = {w: statistics.median(r["wall_s"] for r in rs) for w, rs in runs.items()}
    command = (f"python benchmarks/evaluation_scaling.py --n {args.n} --steps {args.steps} "
               f"--batch-size {args.batch_size} --repeats {args.repeats}")
    result = {
        "command": command,
        "what": f"tfrobust evaluate --attacks pgd --steps {args.steps} on {args.n} MNIST test images, "
                "MNIST CNN (random weights), 1 thread per worker",
        "hardware": hardware(),
        "load_average_1min_before": round(load_before, 2),
        "examples_per_second": {f"{w}_worker": round(args.n / median[w], 2) for w in median},
        "speedup_2_workers": round(median[1] / median[2], 3),
        "speedup_2_workers_process_wall": round(wall[1] / wall[2], 3),
        "goal": 1.8,
        "identical": all(r["identical"] for rs in runs.values() for r in rs),
        "runs": {f"{w}_worker": rs for w, rs in runs.items()},
        "repeats": args.repeats,
    }
    write_result(args.out, result, command)
    print(json.dumps({k: result[k] for k in ("examples_per_second", "speedup_2_workers", "identical")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
