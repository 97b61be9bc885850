"""Tests of tfrobust.serving.server: TF Serving's REST API, hardening, versions, batching, fuzz, load."""

import asyncio
import concurrent.futures
import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from helpers import SHAPE, images, load_script, small_cnn  # noqa: E402
from tfrobust.serving import export, server  # noqa: E402
from tfrobust.serving.client import RestClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    """The benchmark module (its fuzzers and server process helper)."""
    return load_script(REPO / "benchmarks" / "serving_bench.py")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "clf"
    export.export_saved_model(small_cnn(0), path, norm="l2")
    return path


@pytest.fixture(scope="module")
def running(base):
    config = server.ServerConfig({"clf": str(base), "other": str(base)}, port=0, poll_seconds=0.2,
                                 max_body_bytes=200_000)
    with server.start_server(config) as s:
        yield s


@pytest.fixture()
def client(running):
    c = RestClient(running.url, "clf")
    yield c
    c.close()


def post(client, body, path="/v1/models/clf:predict"):
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    status, answer = client.request("POST", path, raw)
    return status, json.loads(answer)


def reference(base, x, signature):
    fn = tf.saved_model.load(str(base / "1")).signatures[signature]
    return {k: v.numpy() for k, v in fn(inputs=tf.constant(x)).items()}


# -- TF Serving's API -------------------------------------------------------------------------


def test_binds_loopback_by_default():
    assert server.ServerConfig({"m": "x"}).host == "127.0.0.1"
    assert server.ServerConfig({"m": "x"}).port == 8501


def test_status(client):
    status, doc = client.request("GET", "/v1/models/clf")
    assert status == 200
    assert json.loads(doc) == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.request("GET", "/v1/models/clf/versions/1")[0] == 200
    status, doc = client.request("GET", "/v1/models/clf/versions/2")
    assert status == 404 and "Could not find version 2" in json.loads(doc)["error"]


def test_metadata(client):
    doc = client.metadata()
    assert doc["model_spec"] == {"name": "clf", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "robustness"} <= set(sigs)
    inp = sigs["robustness"]["inputs"]["inputs"]
    assert inp["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in inp["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    outs = sigs["robustness"]["outputs"]
    assert set(outs) == set(export.ROBUSTNESS_OUTPUTS)
    assert outs["predicted_class"]["dtype"] == "DT_INT64"
    assert sigs["robustness"]["method_name"] == "tensorflow/serving/predict"
    assert client.request("GET", "/v1/models/clf/versions/1/metadata")[0] == 200
    assert client.input_shape("robustness") == SHAPE


@pytest.mark.parametrize("signature", ["serving_default", "robustness"])
def test_predict_row_and_columnar(client, base, signature):
    x = images(3)
    ref = reference(base, x, signature)
    status, rows = post(client, {"signature_name": signature, "instances": x.tolist()})
    assert status == 200 and set(rows) == {"predictions"}
    assert len(rows["predictions"]) == 3 and set(rows["predictions"][0]) == set(ref)
    status, cols = post(client, {"signature_name": signature, "inputs": x.tolist()})
    assert status == 200 and set(cols) == {"outputs"} and set(cols["outputs"]) == set(ref)
    for key, want in ref.items():
        np.testing.assert_allclose(np.array([r[key] for r in rows["predictions"]]), want,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.array(cols["outputs"][key]), want, rtol=1e-4, atol=1e-5)


def test_named_inputs_and_default_signature(client, base):
    x = images(2)
    status, doc = post(client, {"instances": [{"inputs": row} for row in x.tolist()]})
    assert status == 200 and set(doc["predictions"][0]) == set(export.SERVING_OUTPUTS)
    status, doc = post(client, {"signature_name": "", "inputs": {"inputs": x.tolist()}})
    assert status == 200
    np.testing.assert_allclose(doc["outputs"]["logits"], reference(base, x, "serving_default")["logits"],
                               rtol=1e-4, atol=1e-5)


def test_integers_are_accepted_as_floats(client):
    status, doc = post(client, {"instances": np.ones((1, *SHAPE), int).tolist()})
    assert status == 200


def test_version_paths_and_several_models(client, running):
    x = images(1).tolist()
    assert post(client, {"instances": x}, "/v1/models/clf/versions/1:predict")[0] == 200
    assert post(client, {"instances": x}, "/v1/models/other:predict")[0] == 200
    status, doc = post(client, {"instances": x}, "/v1/models/clf/versions/9:predict")
    assert status == 404 and doc == {"error": "Servable not found for request: Specific(clf, 9)"}
    status, doc = post(client, {"instances": x}, "/v1/models/nope:predict")
    assert status == 404 and doc == {"error": "Servable not found for request: Latest(nope)"}
    assert client.request("GET", "/v1/models/nope")[0] == 404


def test_openapi_description(client):
    status, raw = client.request("GET", "/openapi.json")
    doc = json.loads(raw)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/models/{name}", "/v1/models/{name}/metadata", "/v1/models/{name}:predict",
            "/v1/models/{name}/versions/{version}:predict"} <= set(doc["paths"])
    predict = doc["paths"]["/v1/models/{name}:predict"]["post"]
    assert "requestBody" in predict and {"200", "400", "404", "413"} <= set(predict["responses"])
    assert "422" not in json.dumps(doc["paths"])


# -- hardening ----------------------------------------------------------------------------------

GOOD = images(1).tolist()
NAN_ROW = images(1).tolist()
NAN_ROW[0][0][0][0] = float("nan")
INF_ROW = images(1).tolist()
INF_ROW[0][3][3][0] = float("inf")
STR_ROW = images(1).tolist()
STR_ROW[0][1][1][0] = "0.5"

BAD_REQUESTS = [
    # (body, status, a piece of the message)
    (b"", 400, "The document is empty"),
    (b"   ", 400, "The document is empty"),
    (b"{bad json", 400, "JSON Parse error"),
    (b'{"instances": [1, 2', 400, "JSON Parse error"),
    (b"\xff\xfe\x00garbage", 400, "JSON Parse error"),
    (b"[1, 2, 3]", 400, "Is not object"),
    (b'"text"', 400, "Is not object"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "JSON Parse error"),
    (b'{"instances": [' + b"1" * 5000 + b"]}", 400, "JSON Parse error"),
    ({}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instance": GOOD}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": GOOD, "inputs": GOOD}, 400, "only one of 'inputs' or 'instances'"),
    ({"instances": []}, 400, "No values in 'instances' array"),
    ({"instances": 0.5}, 400, "to be an list/array"),
    ({"inputs": []}, 400, "expected shape [-1, 8, 8, 1]"),
    ({"inputs": {"inputs": []}}, 400, "expected shape"),
    ({"inputs": {"x": GOOD}}, 400, "Missing named input: inputs"),
    ({"inputs": {"inputs": GOOD, "x": GOOD}}, 400, "unknown named input"),
    ({"instances": [{"x": GOOD[0]}]}, 400, "must only have keys: inputs"),
    ({"instances": [{"inputs": GOOD[0]}, GOOD[0]]}, 400, "Expecting object but got list"),
    ({"instances": [GOOD[0], {"inputs": GOOD[0]}]}, 400, "Expecting value/list but got object"),
    ({"instances": [[1.0, 2.0]]}, 400, "expected shape [-1, 8, 8, 1]"),
    ({"inputs": GOOD[0]}, 400, "expected shape"),
    ({"inputs": images(1, 2).reshape(1, 4, 16, 1).tolist()}, 400, "but got [1, 4, 16, 1]"),
    ({"instances": [GOOD[0], GOOD[0][:7]]}, 400, "ragged"),
    ({"inputs": NAN_ROW}, 400, "finite; found NaN"),
    ({"inputs": INF_ROW}, 400, "finite; found Inf"),
    (b'{"inputs": ' + json.dumps(GOOD).replace("0.", "1e999", 1).encode() + b"}", 400, "finite"),
    ({"inputs": (images(1) * 3).tolist()}, 400, "must lie in [0, 1]"),
    ({"inputs": (images(1) - 2).tolist()}, 400, "must lie in [0, 1]"),
    ({"inputs": STR_ROW}, 400, "found strings"),
    ({"inputs": np.zeros((1, *SHAPE), bool).tolist()}, 400, "found booleans"),
    ({"inputs": [[[[None]] * 8] * 8]}, 400, "expected numbers"),
    ({"inputs": [[[[10**30]] * 8] * 8]}, 400, "expected numbers"),
    ({"inputs": {"b64": "AAAA"}}, 400, "Missing named input"),
    ({"instances": GOOD, "signature_name": 3}, 400, "'signature_name' key must be a string"),
    ({"instances": GOOD, "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ({"instances": GOOD, "signature_name": "__saved_model_init_op"}, 400, "not found in signature def"),
]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS,
                         ids=[f"bad{i}" for i in range(len(BAD_REQUESTS))])
def test_bad_request_gets_clear_4xx(client, body, status, message):
    got, doc = post(client, body)
    assert (got, list(doc)) == (status, ["error"]), doc
    assert message in doc["error"]


def test_oversize_body_gets_413(client):
    raw = b'{"inputs": [' + b"0.5," * 60_000 + b"0.5]}"  # 240 kB, over the 200 kB limit
    status, answer = client.request("POST", "/v1/models/clf:predict", raw)
    assert status == 413 and "exceeds the limit of 200000 bytes" in json.loads(answer)["error"]
    assert client.request("GET", "/v1/models/clf")[0] == 200  # same connection still usable


def test_oversize_chunked_body_gets_413(running):
    import http.client

    host, port = running.url.rsplit("/", 1)[-1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"0.5," * 10_000 for _ in range(10))  # no Content-Length: streamed
    conn.request("POST", "/v1/models/clf:predict", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 413 and "exceeds" in json.loads(response.read())["error"]
    conn.close()


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/models/clf:predict", 400),
    ("GET", "/v1/models/clf/versions/x", 400),
    ("GET", "/v1/models/clf/versions/99999999999999999999", 400),
    ("POST", "/v1/models/clf/versions/abc:predict", 400),
    ("POST", "/v1/models/clf:classify", 400),
    ("POST", "/v1/models/clf:explode", 404),
    ("GET", "/v2/anything", 404),
    ("PUT", "/v1/models/clf", 405),
    ("DELETE", "/v1/models/clf:predict", 405),
])
def test_bad_paths_and_methods(client, method, path, status):
    got, raw = client.request(method, path, b"{}" if method in ("POST", "PUT") else None)
    assert got == status and isinstance(json.loads(raw)["error"], str)


def test_server_survives_bad_requests(client):
    for body, _, _ in BAD_REQUESTS:
        post(client, body)
    assert post(client, {"instances": GOOD})[0] == 200


# -- versions ----------------------------------------------------------------------------------


def test_picks_up_new_version_without_restart(tmp_path):
    base = tmp_path / "m"
    export.export_saved_model(small_cnn(seed=0), base)
    config = server.ServerConfig({"m": str(base)}, port=0, poll_seconds=0.1)
    x = images(2)
    with server.start_server(config) as s:
        c = RestClient(s.url, "m")
        first = c.predict(x)["logits"]
        new_model = small_cnn(seed=5)
        export.export_saved_model(new_model, base)
        deadline = time.monotonic() + 60
        while c.status()["model_version_status"][0]["version"] != "2":
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.1)
        second = c.predict(x)["logits"]
        np.testing.assert_allclose(second, new_model(x).numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(first, second)
        assert c.metadata()["model_spec"]["version"] == "2"
        old = RestClient(s.url, "m", version=1)
        with pytest.raises(Exception, match="Specific\\(m, 1\\)"):
            old.predict(x)


def test_broken_version_is_skipped(tmp_path):
    base = tmp_path / "m"
    export.export_saved_model(small_cnn(0), base)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a saved model")
    with server.start_server(server.ServerConfig({"m": str(base)}, port=0)) as s:
        entries = RestClient(s.url, "m").status()["model_version_status"]
        assert entries[0] == {"version": "1", "state": "AVAILABLE",
                              "status": {"error_code": "OK", "error_message": ""}}
        assert entries[1]["version"] == "2" and entries[1]["state"] == "END"
        assert RestClient(s.url, "m").predict(images(1))["logits"].shape == (1, 10)


def test_empty_base_path_answers_404_until_a_version_appears(tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    with server.start_server(server.ServerConfig({"m": str(base)}, port=0, poll_seconds=0.1)) as s:
        c = RestClient(s.url, "m")
        status, raw = c.request("GET", "/v1/models/m")
        assert status == 404 and "Could not find any versions of model m" in json.loads(raw)["error"]
        assert c.request("POST", "/v1/models/m:predict", b'{"instances": [1]}')[0] == 404
        export.export_saved_model(small_cnn(0), base)
        deadline = time.monotonic() + 60
        while c.request("GET", "/v1/models/m")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# -- batching ------------------------------------------------------------------------------------


class _SlowServed:
    """Stands in for a ServedVersion: doubles its input, slowly, and records call sizes."""

    name, version = "fake", 1

    def __init__(self):
        self.sizes = []

    def run(self, signature, inputs):
        self.sizes.append(len(inputs["inputs"]))
        time.sleep(0.05)
        return {"y": inputs["inputs"] * 2}


def test_batcher_merges_queued_requests_and_splits_outputs():
    served = _SlowServed()
    executor = concurrent.futures.ThreadPoolExecutor(1)

    async def scenario():
        batcher = server.Batcher(served, "s", executor, max_batch_size=8, timeout_s=0.0, workers=1)
        xs = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(9)]
        outs = await asyncio.gather(*(batcher.submit({"inputs": x}) for x in xs))
        batcher.close()
        return xs, outs, batcher

    xs, outs, batcher = asyncio.run(scenario())
    executor.shutdown()
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x * 2)  # every request gets its own rows back
    assert sum(served.sizes) == sum(len(x) for x in xs)
    assert max(served.sizes) <= 8 and len(served.sizes) < len(xs)  # batched, within the cap
    assert batcher.requests == 9 and batcher.calls == len(served.sizes)


def test_concurrent_requests_get_their_own_answers(running, base):
    x = images(24, seed=9)
    ref = reference(base, x, "robustness")
    c = RestClient(running.url, "clf")

    def one(i):
        return c.robustness(x[i:i + 1])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(len(x))))
    for i, out in enumerate(outs):
        for key in ("margin", "grad_norm", "effective_margin"):
            np.testing.assert_allclose(out[key][0], ref[key][i], rtol=1e-4, atol=1e-5)


def test_bounded_load_has_no_errors(running):
    bench = load_bench()
    body = bench.predict_body(images(1), "robustness")
    result = bench.run_load(running.url, "clf", body, requests=60, clients=4)
    assert result["errors"] == [] and result["requests"] == 60
    assert 0 < result["p50"] <= result["p99"]


# -- command line and process-level robustness ----------------------------------------------------


def test_cli_serve_several_models_and_clean_shutdown(base):
    bench = load_bench()
    with bench.ServerProcess({"a": str(base), "b": str(base)}) as proc:
        for name in ("a", "b"):
            assert RestClient(proc.url, name).predict(images(1))["logits"].shape == (1, 10)
        assert re.match(r"http://127\.0\.0\.1:\d+$", proc.url)
    assert proc.proc.returncode in (0, -signal.SIGINT, 130)


def test_cli_serve_rejects_bad_options(tmp_path, capsys):
    from tfrobust import cli

    assert cli.main(["serve", "--model-base-path", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "noequals"]) == 2
    assert "NAME=BASE" in capsys.readouterr().err
    assert cli.main(["serve"]) == 2
    assert "no model to serve" in capsys.readouterr().err


def test_model_config_file(tmp_path):
    (tmp_path / "config").mkdir()
    cfg = tmp_path / "config" / "models.config"
    cfg.write_text('model_config_list {\n  # a comment\n  config { name: "a" base_path: "/models/a" '
                   'model_platform: "tensorflow" }\n  config {\n    name: "b"\n    base_path: "rel/b"\n  }\n}\n')
    assert server.read_model_config_file(cfg) == {"a": "/models/a", "b": str(tmp_path / "config" / "rel/b")}
    (tmp_path / "empty.config").write_text("model_config_list { }")
    with pytest.raises(ValueError, match="no 'config"):
        server.read_model_config_file(tmp_path / "empty.config")


def test_fuzz_schemathesis_and_near_valid(base):
    """At least 1,000 schemathesis cases plus near-valid predict bodies: no 5xx, no crash."""
    pytest.importorskip("schemathesis")
    bench = load_bench()
    with bench.ServerProcess({"clf": str(base)}) as proc:
        fuzz = bench.run_schemathesis_fuzz(proc.url, "clf", cases=1000)
        near = bench.run_hypothesis_fuzz(proc.url, "clf", SHAPE, cases=150)
        assert proc.alive(), "the server died during the fuzz run"
        assert RestClient(proc.url, "clf").predict(images(1))["logits"].shape == (1, 10)
    assert fuzz["cases"] >= 1000
    assert fuzz["5xx"] == 0 and fuzz["failures"] == [], fuzz
    assert near["5xx"] == 0 and near["failures"] == [], near
    assert near["status_counts"].get("200", 0) > 0 and near["status_counts"].get("400", 0) > 0
