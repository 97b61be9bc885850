"""Serving benchmark: latency, throughput, load and fuzz of ``tfrobust serve``.

Exports a classifier (by default the decision-surface paper's MNIST CNN with
random weights: latency does not depend on the weights), starts
``tfrobust serve`` in its own process on 127.0.0.1, and measures:

* latency (p50, p99) and throughput (images/s) of ``serving_default`` and
  ``robustness`` at batch 1 and 64, with several concurrent keep-alive
  clients sending a fixed number of requests; each figure is the median over
  ``--repeats`` rounds, the configurations interleaved within a round;
* the errors of all those requests (must be 0);
* a fuzz run: schemathesis cases generated from the server's OpenAPI
  description plus hypothesis-generated near-valid predict bodies (must give
  no 5xx, and the server must still be up afterwards);
* the model-only cost of each signature (SavedModel called in-process);
* the same latency and throughput over TF Serving's gRPC port of the same server
  (``PredictionService/Predict``), beside REST in the same rounds (``grpc`` in the
  JSON; ``--grpc-only`` measures just that and adds it to an existing ``--out``).

It prints the command that reproduces it and writes ``--out`` (default
``benchmarks/results/serving.json``). Everything is bounded in count and time
and talks only to 127.0.0.1.

Usage::

    python benchmarks/serving_bench.py                 # the committed figures
    python benchmarks/serving_bench.py --quick         # a smoke run (seconds)
    python benchmarks/serving_bench.py --grpc-only     # gRPC beside REST, added to the JSON
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIGNATURES = ("serving_default", "robustness")
BATCHES = (1, 64)


# -- command ------------------------------------------------------------------------------


def command_line(argv: list[str]) -> str:
    return "python benchmarks/serving_bench.py" + "".join(f" {shlex.quote(a)}" for a in argv)


# -- server process ------------------------------------------------------------------------


class ServerProcess:
    """``python -m tfrobust serve`` in a subprocess on a free loopback port.

    With ``grpc=True`` it also serves gRPC on a free port (``grpc_target``); otherwise
    ``--no-grpc`` (``grpc_target`` is ``None``).
    """

    def __init__(self, models: dict[str, str], extra: list[str] = (), poll_seconds: float = 1.0,
                 grpc: bool = False):
        args = [sys.executable, "-m", "tfrobust", "serve", "--port", "0", "--log-level", "warning",
                "--poll-seconds", str(poll_seconds), *(["--grpc-port", "0"] if grpc else ["--no-grpc"]),
                *extra]
        for name, base in models.items():
            args += ["--model", f"{name}={base}"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
                   PYTHONUNBUFFERED="1")
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.url = self._read_url()

    def _read_url(self, timeout: float = 120) -> str:
        found: list[str] = []
        self.grpc_target: str | None = None

        def reader():
            for line in self.proc.stdout:
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    found.append(m.group(1))
                    g = re.search(r"gRPC on (\S+)", line)
                    self.grpc_target = g.group(1) if g else None
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout)
        if not found:
            self.stop()
            self.stderr.seek(0)
            raise RuntimeError("server did not start:\n" + self.stderr.read().decode()[-3000:])
        return found[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- load ------------------------------------------------------------------------------------


def predict_body(images: np.ndarray, signature: str) -> bytes:
    return json.dumps({"signature_name": signature, "inputs": images.tolist()}).encode()


def _timed_clients(connect: Callable[[], tuple[Callable[[], str | None], Callable[[], None]]],
                   requests: int, clients: int) -> dict[str, Any]:
    """Sends ``requests`` requests from ``clients`` threads; returns timings.

    ``connect()`` runs in each thread before the clock starts and returns ``(send, close)``:
    ``send()`` makes one request and returns ``None`` or an error description.
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counts = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(n: int) -> None:
        mine, bad = [], []
        send, close = connect()
        barrier.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            problem = send()
            if problem is not None:
                bad.append(problem)
            mine.append(time.perf_counter() - t0)
        close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker, args=(n,)) for n in counts]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "requests_per_s": requests / wall, "wall_s": wall, "errors": errors,
            "requests": requests}


def run_load(url: str, model: str, body: bytes, requests: int, clients: int) -> dict[str, Any]:
    """Sends ``requests`` copies of ``body`` from ``clients`` threads over REST; returns timings."""
    from tfrobust.serving.client import RestClient

    client = RestClient(url, model)
    path = f"/v1/models/{model}:predict"

    def connect():
        client.request("GET", f"/v1/models/{model}")  # open this thread's keep-alive connection

        def send():
            try:
                status, raw = client.request("POST", path, body)
            except OSError as err:
                return repr(err)
            return None if status == 200 else f"HTTP {status}: {raw[:200]!r}"
        return send, client.close

    return _timed_clients(connect, requests, clients)


def grpc_request(images: np.ndarray, signature: str, model: str = "bench") -> bytes:
    """A serialized ``PredictRequest`` (what :func:`predict_body` is for REST)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(images))
    return request.SerializeToString()


def run_grpc_load(target: str, request: bytes, requests: int, clients: int) -> dict[str, Any]:
    """Sends ``requests`` copies of a serialized PredictRequest from ``clients`` threads, one
    channel each, over gRPC; returns timings. Like :func:`run_load`, the body is encoded once
    and the answer is not decoded, so both transports time the round trip and the server."""
    import grpc

    def connect():
        channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
        grpc.channel_ready_future(channel).result(timeout=30)
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # bytes in, bytes out

        def send():
            try:
                predict(request, timeout=60)
            except grpc.RpcError as err:
                return f"{err.code().name}: {str(err.details())[:200]}"
            return None
        return send, channel.close

    return _timed_clients(connect, requests, clients)


# -- fuzz --------------------------------------------------------------------------------------


def run_schemathesis_fuzz(url: str, model: str, cases: int = 1000, seed: int = 0,
                          on_case: Callable | None = None) -> dict[str, Any]:
    """Schemathesis cases from ``url``/openapi.json: every operation, positive and negative
    generation, half with random path values and half with the served model's name.

    Checks every response for: no 5xx, a documented status code, a JSON body
    conforming to the documented schema (``positive_data_acceptance`` is left
    out: tensor shapes depend on the model, not on the published schema).

    Returns:
        ``{"cases": n, "5xx": n, "failures": [...], "status_counts": {...}}``.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings
    from schemathesis import checks as st_checks

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    groups = []
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            groups.append((op, mode, None))
            if mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue  # nothing left to negate once the path is fixed
            fixed = {"name": model}
            if "{version}" in op.path:
                fixed["version"] = "1"
            groups.append((op, mode, fixed))
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    total = 0

    def run_group(op, mode, fixed, examples: int, group_seed: int) -> int:
        strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed)
        produced = 0

        @hyp_seed(group_seed)
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate],
                  report_multiple_bugs=False)
        @given(case=strategy)
        def check(case):
            nonlocal total, produced
            total += 1
            produced += 1
            try:
                response = case.call(base_url=url, timeout=30)
            except Exception as err:  # a dropped connection is a crash symptom
                failures.append(f"{op.label}: {type(err).__name__}: {err}")
                return
            counts[response.status_code] += 1
            if on_case:
                on_case(case, response)
            if response.status_code >= 500:
                failures.append(f"{op.label}: HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                case.validate_response(response, excluded_checks=[st_checks.positive_data_acceptance])
            except Exception as err:  # noqa: BLE001 - recorded, run goes on
                failures.append(f"{op.label}: {str(err)[:300]}")

        check()
        return produced

    # Small search spaces (a GET with fixed path values) run dry early; later
    # passes spread what is left over the groups that still produce new cases.
    active = groups
    for attempt in range(10):
        if total >= cases or not active:
            break
        per_group = -(-(cases - total) // len(active))
        active = [g for g in active if run_group(*g, per_group, seed + attempt) >= per_group]
    return {"cases": total, "5xx": sum(n for code, n in counts.items() if code >= 500),
            "failures": failures[:20], "failure_count": len(failures),
            "status_counts": {str(k): v for k, v in sorted(counts.items())}}


def near_valid_bodies(shape: tuple[int, ...]):
    """A hypothesis strategy of predict bodies close to valid ones (and some valid ones)."""
    from hypothesis import strategies as st

    def tensor(rows):
        return np.random.default_rng(rows).uniform(0, 1, (rows, *shape)).round(4).tolist()

    poison = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39, -0.5, 1.5, "0.5",
                              None, True, [], {}, [0.1, 0.2], 10**30])

    @st.composite
    def body(draw):
        rows = draw(st.integers(1, 3))
        data = tensor(rows)
        kind = draw(st.sampled_from(["valid", "poison", "ragged", "depth", "empty", "keys",
                                     "signature", "objects", "bytes", "truncate", "batch0"]))
        signature = draw(st.sampled_from(["serving_default", "robustness", "", "nope", 7, None]))
        fmt = draw(st.sampled_from(["instances", "inputs"]))
        doc: Any = {"signature_name": signature, fmt: data}
        if kind == "valid":
            doc["signature_name"] = draw(st.sampled_from(["serving_default", "robustness"]))
        elif kind == "poison":
            r, i = draw(st.integers(0, rows - 1)), draw(st.integers(0, shape[0] - 1))
            data[r][i][draw(st.integers(0, shape[1] - 1))][0] = draw(poison)
        elif kind == "ragged":
            data[draw(st.integers(0, rows - 1))].pop()
        elif kind == "depth":
            doc[fmt] = draw(st.sampled_from([data[0], [data], data[0][0], 0.5, [[[[[0.1]]]]]]))
        elif kind == "empty":
            doc[fmt] = draw(st.sampled_from([[], {}, [[]], "", None]))
        elif kind == "keys":
            doc = draw(st.sampled_from([{}, {"instances": data, "inputs": data}, {"input": data},
                                        [data], "x", 3]))
        elif kind == "objects":
            key = draw(st.sampled_from(["inputs", "x"]))
            doc = {"instances": [{key: row} for row in data]}
            if draw(st.booleans()):
                doc["instances"].append(data[0])
        elif kind == "batch0":
            doc = {"inputs": {"inputs": []}}
        raw = json.dumps(doc, allow_nan=True).encode()
        if kind == "bytes":
            raw = draw(st.binary(max_size=64))
        elif kind == "truncate":
            raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
        return raw

    return body()


def run_hypothesis_fuzz(url: str, model: str, shape: tuple[int, ...], cases: int = 300,
                        seed: int = 0) -> dict[str, Any]:
    """Near-valid predict bodies against the served model; no 5xx, 200s well formed."""
    from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings

    from tfrobust.serving.client import RestClient

    client = RestClient(url, model)
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    total = 0

    @hyp_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(raw=near_valid_bodies(shape))
    def check(raw):
        nonlocal total
        total += 1
        try:
            status, answer = client.request("POST", f"/v1/models/{model}:predict", raw)
        except OSError as err:
            failures.append(f"{type(err).__name__}: {err}")
            return
        counts[status] += 1
        try:
            doc = json.loads(answer)
        except ValueError:
            failures.append(f"HTTP {status}: body is not JSON: {answer[:100]!r}")
            return
        if status >= 500 or status not in (200, 400, 404, 413):
            failures.append(f"HTTP {status}: {answer[:200]!r} for {raw[:200]!r}")
        elif status == 200 and not ({"predictions"} <= set(doc) or {"outputs"} <= set(doc)):
            failures.append(f"200 without predictions/outputs: {answer[:200]!r}")
        elif status != 200 and not isinstance(doc.get("error"), str):
            failures.append(f"HTTP {status} without an error message: {answer[:200]!r}")

    check()
    client.close()
    return {"cases": total, "5xx": sum(n for code, n in counts.items() if code >= 500),
            "failures": failures[:20], "failure_count": len(failures),
            "status_counts": {str(k): v for k, v in sorted(counts.items())}}


# -- model-only cost ------------------------------------------------------------------------------


def model_only_ms(version_dir: str, shape: tuple[int, ...], repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of one in-process signature call (no HTTP, no JSON)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    out: dict[str, dict[str, float]] = {}
    for signature in SIGNATURES:
        fn = loaded.signatures[signature]
        out[signature] = {}
        for batch in BATCHES:
            x = tf.constant(np.random.default_rng(0).uniform(0, 1, (batch, *shape)), tf.float32)
            for _ in range(3):
                fn(inputs=x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(inputs=x)["logits"].numpy()
                times.append((time.perf_counter() - t0) * 1000)
            out[signature][str(batch)] = float(np.median(times))
    return out


def certified_latency(model, shape: tuple[int, ...], args: argparse.Namespace, command: str) -> dict[str, Any]:
    """In-process cost of ``robustness`` with ``certified_radius`` against ``serving_default``.

    One export per bound (IBP, CROWN-IBP) at the default tolerance (1/512, 9 bisection steps);
    medians of ``args.repeats * 10`` calls per signature and batch, the signatures alternating.
    """
    import tensorflow as tf
    from tfrobust.serving.export import certify_settings, export_saved_model
    from tfrobust.utils import hardware, source_commit

    work = Path(tempfile.mkdtemp(prefix="tfrobust-certified-bench-"))
    result: dict[str, Any] = {"command": command, "hardware": hardware(), "commit": source_commit(),
                              "threads": "TF defaults", "ms": {}, "ratio_over_serving_default": {}}
    try:
        for method in ("ibp", "crown-ibp"):
            settings = certify_settings(method)
            loaded = tf.saved_model.load(export_saved_model(model, work / method, norm=args.norm, certify=settings))
            fns = {name: loaded.signatures[name] for name in SIGNATURES}
            result["bisection_steps"] = settings["bisection_steps"]
            for batch in BATCHES:
                x = tf.constant(np.random.default_rng(0).uniform(0, 1, (batch, *shape)), tf.float32)
                times = {name: [] for name in fns}
                for fn in fns.values():
                    for _ in range(3):
                        fn(inputs=x)
                for _ in range(args.repeats * 10):
                    for name, fn in fns.items():
                        t0 = time.perf_counter()
                        fn(inputs=x)["logits"].numpy()
                        times[name].append((time.perf_counter() - t0) * 1000)
                ms = {name: round(float(np.median(t)), 3) for name, t in times.items()}
                result["ms"].setdefault(method, {})[str(batch)] = ms
                result["ratio_over_serving_default"].setdefault(method, {})[str(batch)] = round(
                    ms["robustness"] / ms["serving_default"], 2)
                print(f"certified_radius ({method}), batch {batch}: {ms}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["goal"] = "robustness with certified_radius <= 10x serving_default in-process at batch 64"
    return result


def smoothed_latency(model, shape: tuple[int, ...], args: argparse.Namespace, command: str) -> dict[str, Any]:
    """In-process cost of the ``smoothed`` signature (CERTIFY, ``n0`` + ``n`` draws per example)
    against ``serving_default``, per example, at batches 1 and 8; medians of ``args.repeats * 3``
    calls per signature and batch, the signatures alternating."""
    import tensorflow as tf
    from tfrobust.serving.export import export_saved_model, smoothing_settings
    from tfrobust.utils import hardware, source_commit

    settings = smoothing_settings(args.smoothed_sigma, n=args.smoothed_samples, alpha=0.001, n0=100)
    work = Path(tempfile.mkdtemp(prefix="tfrobust-smoothed-bench-"))
    result: dict[str, Any] = {"command": command, "hardware": hardware(), "commit": source_commit(),
                              "threads": "TF defaults", "settings": settings, "ms_per_example": {},
                              "ratio_over_serving_default": {}}
    try:
        loaded = tf.saved_model.load(export_saved_model(model, work / "m", norm=args.norm, smoothing=settings))
        fns = {name: loaded.signatures[name] for name in ("serving_default", "smoothed")}
        for batch in (1, 8):
            x = tf.constant(np.random.default_rng(0).uniform(0, 1, (batch, *shape)), tf.float32)
            times = {name: [] for name in fns}
            for fn in fns.values():
                fn(inputs=x)
            for _ in range(args.repeats * 3):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    {k: v.numpy() for k, v in fn(inputs=x).items()}
                    times[name].append((time.perf_counter() - t0) * 1000 / batch)
            ms = {name: round(float(np.median(t)), 3) for name, t in times.items()}
            result["ms_per_example"][str(batch)] = ms
            result["ratio_over_serving_default"][str(batch)] = round(ms["smoothed"] / ms["serving_default"], 1)
            print(f"smoothed (n={settings['n']}), batch {batch}: {ms} ms per example", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def compare_transports(server: ServerProcess, shape: tuple[int, ...], args: argparse.Namespace,
                       command: str) -> dict[str, Any]:
    """REST and gRPC on one server, same model, signatures and batches: p50/p99 latency and
    images/s, each the median over ``args.repeats`` rounds; within a round the transports
    alternate order, so both see the same machine load."""
    from tfrobust.utils import hardware, source_commit

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    arrays = {(s, b): rng.uniform(0, 1, (b, *shape)).astype(np.float32) for s in SIGNATURES for b in BATCHES}
    rest = {k: predict_body(x, k[0]) for k, x in arrays.items()}
    rpc = {k: grpc_request(x, k[0]) for k, x in arrays.items()}
    runners = {"rest": lambda k, n: run_load(server.url, "bench", rest[k], n, args.clients),
               "grpc": lambda k, n: run_grpc_load(server.grpc_target, rpc[k], n, args.clients)}
    for k in arrays:  # warm-up: traces, allocations, connections
        for run in runners.values():
            run(k, 2 * args.clients)
    runs: dict[tuple, list] = collections.defaultdict(list)
    for r in range(args.repeats):
        for b in BATCHES:
            for s in SIGNATURES:
                for transport in (("rest", "grpc") if r % 2 == 0 else ("grpc", "rest")):
                    res = runners[transport]((s, b), args.requests_1 if b == 1 else args.requests_64)
                    runs[(transport, s, b)].append(res)
                    print(f"round {r + 1}: {transport:>4} {s:>15} batch {b:>2}: p50 {res['p50']:7.2f} ms  "
                          f"{res['requests_per_s'] * b:8.1f} images/s  errors {len(res['errors'])}", flush=True)

    def med(t, s, b, key):
        return float(np.median([x[key] for x in runs[(t, s, b)]]))

    table = {t: {"latency_ms": {s: {str(b): {"p50": round(med(t, s, b, "p50"), 3), "p99": round(med(t, s, b, "p99"), 3)}
                                    for b in BATCHES} for s in SIGNATURES},
                 "throughput_per_s": {s: {str(b): round(med(t, s, b, "requests_per_s") * b, 1) for b in BATCHES}
                                      for s in SIGNATURES}} for t in runners}
    every = [x for v in runs.values() for x in v]
    return {
        **table["grpc"],
        "rest_same_run": table["rest"],
        "grpc_over_rest_p50": {s: {str(b): round(med("grpc", s, b, "p50") / med("rest", s, b, "p50"), 3)
                                   for b in BATCHES} for s in SIGNATURES},
        "load": {"requests": sum(x["requests"] for x in every), "errors": sum(len(x["errors"]) for x in every),
                 "error_samples": [e for x in every for e in x["errors"]][:5]},
        "command": command, "commit": source_commit(), "hardware": hardware(),
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": {"clients": args.clients, "requests_per_run": {"1": args.requests_1, "64": args.requests_64},
                     "repeats": args.repeats, "batching": not args.no_batching,
                     "transport": "gRPC: official PredictionService/Predict, float32 tensor_content, one "
                                  "channel per client; REST: HTTP/1.1 keep-alive JSON columnar 'inputs'; "
                                  "both send a body encoded once and do not decode the answer; one "
                                  "`tfrobust serve` process on 127.0.0.1 serving both ports"},
        "ratio_definition": "gRPC p50 latency / REST p50 latency, same signature and batch, same run",
    }


def grpc_readme_table(block: dict[str, Any]) -> str:
    """The gRPC-beside-REST table of serving/README.md, from the ``grpc`` block of the JSON."""
    def ms(v: float) -> str:
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"

    rest = block["rest_same_run"]
    lines = ["| signature | batch | gRPC p50 ms | gRPC images/s | REST p50 ms (same run) | REST images/s "
             "| gRPC / REST p50 |", "|---|---|---|---|---|---|---|"]
    for b in (str(b) for b in BATCHES):
        for s in SIGNATURES:
            lines.append(f"| `{s}` | {b} | {ms(block['latency_ms'][s][b]['p50'])} | "
                         f"{block['throughput_per_s'][s][b]:.0f} | {ms(rest['latency_ms'][s][b]['p50'])} | "
                         f"{rest['throughput_per_s'][s][b]:.0f} | {block['grpc_over_rest_p50'][s][b]:.2f} |")
    return "\n".join(lines)


def compare_batching(base: Path, bodies: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Batch-1 throughput (images/s, median of rounds) with the server's batching on and off."""
    out: dict[str, Any] = {"clients": args.clients, "requests_per_run": args.requests_1}
    medians: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list]] = {"on": collections.defaultdict(list), "off": collections.defaultdict(list)}
    servers = {"on": ServerProcess({"bench": str(base)}), "off": ServerProcess({"bench": str(base)}, ["--no-batching"])}
    try:
        for s in SIGNATURES:
            for proc in servers.values():
                run_load(proc.url, "bench", bodies[(s, 1)], 2 * args.clients, args.clients)
        for r in range(args.repeats):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                for s in SIGNATURES:
                    res = run_load(servers[mode].url, "bench", bodies[(s, 1)], args.requests_1, args.clients)
                    runs[mode][s].append(res)
                    print(f"batching {mode:>3}: {s:>15} batch 1: p50 {res['p50']:7.2f} ms  "
                          f"{res['requests_per_s']:8.1f} images/s  errors {len(res['errors'])}", flush=True)
    finally:
        for proc in servers.values():
            proc.stop()
    for mode, by_sig in runs.items():
        medians[mode] = {s: round(float(np.median([x["requests_per_s"] for x in v])), 1)
                         for s, v in by_sig.items()}
        medians[mode + "_p50_ms"] = {s: round(float(np.median([x["p50"] for x in v])), 3)
                                     for s, v in by_sig.items()}
    out["throughput_per_s"] = {"batching_on": medians["on"], "batching_off": medians["off"]}
    out["p50_ms"] = {"batching_on": medians["on_p50_ms"], "batching_off": medians["off_p50_ms"]}
    out["errors"] = sum(len(x["errors"]) for by_sig in runs.values() for v in by_sig.values() for x in v)
    out["requests"] = sum(x["requests"] for by_sig in runs.values() for v in by_sig.values() for x in v)
    return out


# -- main -------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace):
    import keras

    if args.model:
        from tfrobust.models import load_model

        return load_model(args.model), f"{args.model}"
    keras.utils.set_random_seed(0)
    from tfrobust.models import mnist_cnn

    return mnist_cnn(), "tfrobust.models.mnist_cnn() (28x28x1, 2 conv + 2 dense, random weights)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=".keras classifier (default: the MNIST CNN, random weights)")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests-1", type=int, default=300, help="requests per run at batch 1")
    parser.add_argument("--requests-64", type=int, default=40, help="requests per run at batch 64")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--fuzz-cases", type=int, default=1000, help="schemathesis cases")
    parser.add_argument("--near-valid-cases", type=int, default=300, help="hypothesis predict cases")
    parser.add_argument("--no-batching", action="store_true", help="serve without batching")
    parser.add_argument("--compare-batching", action="store_true",
                        help="also measure batch-1 throughput with batching on and off")
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    parser.add_argument("--certified-only", action="store_true",
                        help="only measure robustness with certified_radius against serving_default in-process, "
                             "and write it under 'certified_radius' in --out, keeping the rest")
    parser.add_argument("--smoothed-only", action="store_true",
                        help="only measure the smoothed signature (CERTIFY in the SavedModel) against "
                             "serving_default in-process, and write it under 'smoothed' in --out, keeping the rest")
    parser.add_argument("--smoothed-sigma", type=float, default=0.25)
    parser.add_argument("--smoothed-samples", type=int, default=1000)
    parser.add_argument("--grpc-only", action="store_true",
                        help="only measure gRPC beside REST on one server, and write it under 'grpc' in --out, "
                             "keeping the rest")
    parser.add_argument("--no-grpc", action="store_true", help="leave the gRPC rows out of a full run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.requests_1, args.requests_64, args.repeats = 20, 4, 1
        args.fuzz_cases, args.near_valid_cases = 48, 20
    command = command_line(argv)
    print(f"command: {command}", flush=True)
    load_before = os.getloadavg()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO))
    from tfrobust.serving.export import export_saved_model, infer_input_shape

    model, model_desc = build_model(args)
    shape = infer_input_shape(model)
    if args.smoothed_only:
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.exists() else {}
        report["smoothed"] = {"model": model_desc, **smoothed_latency(model, shape, args, command)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    if args.certified_only:
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.exists() else {}
        report["certified_radius"] = {"model": model_desc, **certified_latency(model, shape, args, command)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="tfrobust-serving-bench-"))
    base = work / "bench"
    version_dir = export_saved_model(model, base, norm=args.norm)
    print(f"exported {version_dir}", flush=True)
    extra = ["--no-batching"] if args.no_batching else []
    if args.grpc_only:
        with ServerProcess({"bench": str(base)}, extra, grpc=True) as server:
            block = {"model": model_desc, **compare_transports(server, shape, args, command)}
        shutil.rmtree(work, ignore_errors=True)
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.exists() else {}
        report["grpc"] = block
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: block[k] for k in ("latency_ms", "grpc_over_rest_p50", "load")}, indent=2))
        print(f"wrote {out}")
        return 0 if block["load"]["errors"] == 0 else 1
    only = model_only_ms(version_dir, shape, repeats=max(5, 10 * args.repeats))

    rng = np.random.default_rng(0)
    bodies = {(s, b): predict_body(rng.uniform(0, 1, (b, *shape)).astype(np.float32), s)
              for s in SIGNATURES for b in BATCHES}
    results: dict[tuple[str, int], list[dict]] = collections.defaultdict(list)
    load_requests, load_errors, error_samples = 0, 0, []
    with ServerProcess({"bench": str(base)}, extra, grpc=not args.no_grpc) as server:
        print(f"server at {server.url}" + (f", gRPC at {server.grpc_target}" if server.grpc_target else ""),
              flush=True)
        for body in bodies.values():  # warm-up: traces, allocations, connections
            run_load(server.url, "bench", body, 2 * args.clients, args.clients)
        for r in range(args.repeats):
            for b in BATCHES:
                for s in (SIGNATURES if r % 2 == 0 else SIGNATURES[::-1]):
                    n = args.requests_1 if b == 1 else args.requests_64
                    res = run_load(server.url, "bench", bodies[(s, b)], n, args.clients)
                    results[(s, b)].append(res)
                    load_requests += res["requests"]
                    load_errors += len(res["errors"])
                    error_samples += res["errors"][:3]
                    print(f"round {r + 1}: {s:>15} batch {b:>2}: p50 {res['p50']:7.2f} ms  "
                          f"p99 {res['p99']:7.2f} ms  {res['requests_per_s'] * b:8.1f} images/s  "
                          f"errors {len(res['errors'])}", flush=True)
        transports = None if args.no_grpc else compare_transports(server, shape, args, command)
        if transports:
            load_requests += transports["load"]["requests"]
            load_errors += transports["load"]["errors"]
            error_samples += transports["load"]["error_samples"]
        fuzz = run_schemathesis_fuzz(server.url, "bench", args.fuzz_cases)
        print(f"schemathesis: {fuzz['cases']} cases, 5xx {fuzz['5xx']}, "
              f"failures {fuzz['failure_count']}, statuses {fuzz['status_counts']}", flush=True)
        near = run_hypothesis_fuzz(server.url, "bench", shape, args.near_valid_cases)
        print(f"near-valid fuzz: {near['cases']} cases, 5xx {near['5xx']}, "
              f"failures {near['failure_count']}, statuses {near['status_counts']}", flush=True)
        alive = server.alive()
        status_after = None
        if alive:
            from tfrobust.serving.client import RestClient

            status_after = RestClient(server.url, "bench").status()["model_version_status"][0]["state"]
    exit_code = server.proc.returncode
    comparison = compare_batching(base, bodies, args) if args.compare_batching else None
    if comparison:
        load_requests += comparison["requests"]
        load_errors += comparison["errors"]

    def med(s, b, key):
        return float(np.median([r[key] for r in results[(s, b)]]))

    latency = {s: {str(b): {"p50": round(med(s, b, "p50"), 3), "p99": round(med(s, b, "p99"), 3)}
                   for b in BATCHES} for s in SIGNATURES}
    throughput = {s: {str(b): round(med(s, b, "requests_per_s") * b, 1) for b in BATCHES}
                  for s in SIGNATURES}
    ratio = {str(b): round(latency["robustness"][str(b)]["p50"] / latency["serving_default"][str(b)]["p50"], 3)
             for b in BATCHES}
    from tfrobust.utils import hardware, source_commit

    report = {
        "hardware": hardware(),
        "command": command,
        "commit": source_commit(),
        "latency_ms": latency,
        "throughput_per_s": throughput,
        "robustness_over_default": ratio,
        "load": {"requests": load_requests, "errors": load_errors},
        "fuzz": {"cases": fuzz["cases"] + near["cases"], "5xx": fuzz["5xx"] + near["5xx"]},
        **({"grpc": {"model": model_desc, **transports}} if transports else {}),
        "notes": {
            "throughput_unit": "images per second (requests/s x batch)",
            "ratio_definition": "robustness p50 latency / serving_default p50 latency, same batch",
            "goal": "robustness_over_default <= 2.5",
            "goal_met": all(v <= 2.5 for v in ratio.values()),
            "model": model_desc,
            "norm": args.norm,
            "settings": {"clients": args.clients, "requests_per_run": {"1": args.requests_1,
                         "64": args.requests_64}, "repeats": args.repeats,
                         "batching": not args.no_batching, "transport": "HTTP/1.1 keep-alive, JSON "
                         "columnar 'inputs', server in its own process on 127.0.0.1"},
            "model_only_ms": only,
            "model_only_ratio": {str(b): round(only["robustness"][str(b)] / only["serving_default"][str(b)], 3)
                                 for b in BATCHES},
            "fuzz_detail": {"schemathesis": fuzz, "near_valid": near,
                            "server_alive_after": alive, "status_after": status_after,
                            "server_exit_code_after_sigint": exit_code},
            "batching_comparison": comparison,
            "load_error_samples": error_samples[:5],
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }
    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"model only (ms): {json.dumps(only)}")
    print(json.dumps({k: report[k] for k in ("latency_ms", "throughput_per_s",
                                             "robustness_over_default", "load", "fuzz")}, indent=2))
    print(f"wrote {out}")
    ok = load_errors == 0 and report["fuzz"]["5xx"] == 0 and alive and not fuzz["failure_count"] \
        and not near["failure_count"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
