"""Tests of the local server's gRPC port, through tensorflow-serving-api's own stubs.

Float tolerance: REST and gRPC answers come from the same SavedModel signature on the same
inputs. gRPC carries float32 bytes; REST carries the float64 digits of those float32 values,
which convert back exactly. The only difference allowed is the batch a request shares with
others (the server batches concurrent requests), which can change the order of float32
sums by a rounding step: equal to rtol 1e-6.
"""

import concurrent.futures
import importlib.util
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
pytest.importorskip("fastapi")

from google.protobuf import json_format  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from helpers import SHAPE, images, load_script, small_cnn  # noqa: E402
from tfrobust.serving import export, server  # noqa: E402
from tfrobust import cli  # noqa: E402
from tfrobust.serving.client import GrpcClient, RestClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOL = {"rtol": 1e-6, "atol": 1e-7}
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PRECONDITION, EXHAUSTED = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "clf"
    export.export_saved_model(small_cnn(0), path, norm="l2")
    return path


@pytest.fixture(scope="module")
def running(base):
    config = server.ServerConfig({"clf": str(base), "other": str(base)}, port=0, grpc_port=0,
                                 max_body_bytes=200_000)
    with server.start_server(config) as s:
        yield s


@pytest.fixture(scope="module")
def channel(running):
    ch = grpc.insecure_channel(running.grpc_target)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def reference(base, x, signature):
    fn = tf.saved_model.load(str(base / "1")).signatures[signature]
    return {k: v.numpy() for k, v in fn(inputs=tf.constant(x)).items()}


def request_for(x=None, signature="", model="clf", version=None, inputs=None):
    """A PredictRequest for ``x`` as input ``inputs`` (or for the tensors of ``inputs``)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in ({"inputs": x} if inputs is None else inputs).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value.code(), err.value.details()


# -- the API ----------------------------------------------------------------------------------------


def test_target_and_config():
    assert server.ServerConfig({"m": "x"}).grpc_port is None  # off unless asked for
    with pytest.raises(ValueError, match="grpc_port=70000 must be in 0..65535"):
        server.ServerConfig({"m": "x"}, grpc_port=70000)


@pytest.mark.parametrize("signature", ["serving_default", "robustness"])
def test_predict_equals_rest_and_the_savedmodel(running, stub, base, signature):
    x = images(5, seed=3)
    response = stub.Predict(request_for(x, signature), timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("clf", 1, signature)
    over_grpc = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    over_rest = RestClient(running.url, "clf").predict(x, signature_name=signature)
    ref = reference(base, x, signature)
    assert set(over_grpc) == set(over_rest) == set(ref)
    for key, want in ref.items():
        assert over_grpc[key].dtype == want.dtype  # float32 / int64 on the wire, as TF Serving
        np.testing.assert_allclose(over_grpc[key], over_rest[key], **TOL)
        np.testing.assert_allclose(over_grpc[key], want, **TOL)


def test_default_signature_version_and_output_filter(stub, base):
    x = images(2)
    response = stub.Predict(request_for(x, version=1), timeout=30)
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == set(export.SERVING_OUTPUTS)
    request = request_for(x, "robustness")
    request.output_filter.extend(["margin", "predicted_class"])
    response = stub.Predict(request, timeout=30)
    assert set(response.outputs) == {"margin", "predicted_class"}
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["margin"]),
                               reference(base, x, "robustness")["margin"], **TOL)


def test_metadata_lists_signatures_like_rest(running, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "clf"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("clf", 1)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sigs = sig_map.signature_def
    assert {"serving_default", "robustness"} <= set(sigs)
    inp = sigs["robustness"].inputs["inputs"]
    assert inp.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in inp.tensor_shape.dim] == [-1, *SHAPE]
    assert set(sigs["robustness"].outputs) == set(export.ROBUSTNESS_OUTPUTS)
    assert sigs["robustness"].outputs["predicted_class"].dtype == tf.int64.as_datatype_enum
    assert sigs["robustness"].outputs["margin"].dtype == tf.float32.as_datatype_enum
    rest = RestClient(running.url, "clf").metadata()["metadata"]["signature_def"]["signature_def"]
    assert json_format.MessageToDict(sig_map, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)["signature_def"] == rest
    assert GrpcClient(running.grpc_target, "clf").input_shape("robustness") == SHAPE


def test_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "clf"
    (status,) = stub.GetModelStatus(request, timeout=30).model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert (status.status.error_code, status.status.error_message) == (0, "")  # OK
    request.model_spec.version.value = 2
    assert rpc_error(stub.GetModelStatus, request) == (NOT_FOUND, "Could not find version 2 of model clf")
    request.model_spec.name = "nope"
    request.model_spec.ClearField("version")
    assert rpc_error(stub.GetModelStatus, request) == (NOT_FOUND, "Servable not found for request: Latest(nope)")
    assert rpc_error(stub.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        INVALID, "Missing ModelSpec")


# -- bad requests: TF Serving's status codes, and the server keeps serving -------------------------

GOOD = images(1)


def _with(dims=None, float_val=None, label=None, **spec):
    """A robustness request for GOOD with its tensor's shape or values, or its model spec, changed."""
    request = request_for(GOOD, "robustness")
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    if label is not None:
        request.model_spec.version_label = label
    tensor = request.inputs["inputs"]
    if dims is not None:
        del tensor.tensor_shape.dim[:]
        for size in dims:
            tensor.tensor_shape.dim.add().size = size
    if float_val is not None:
        tensor.ClearField("tensor_content")
        tensor.float_val.extend(float_val)
    return request


NAN, INF = GOOD.copy(), GOOD.copy()
NAN[0, 0, 0, 0], INF[0, 3, 3, 0] = np.nan, np.inf

BAD = [
    # (request, code, message or a piece of it)
    (predict_pb2.PredictRequest(), INVALID, "Missing ModelSpec"),
    (request_for(signature="robustness", inputs={}), INVALID,
     "input size does not match signature: 0!=1 len({}) != len({inputs}). Sent extra: {}. "
     "Missing but required: {inputs}."),
    (request_for(signature="robustness", inputs={"x": GOOD}), INVALID,
     "Sent extra: {x}. Missing but required: {inputs}."),
    (request_for(signature="robustness", inputs={"inputs": GOOD, "x": GOOD}), INVALID, "Sent extra: {x}."),
    (request_for(GOOD.astype(np.float64)), INVALID, "expected dtype DT_FLOAT but got DT_DOUBLE"),
    (request_for(np.array([b"a"])), INVALID, "expected dtype DT_FLOAT but got DT_STRING"),
    (request_for(images(1, 2).reshape(1, 4, 16, 1)), INVALID,
     "expected shape [-1, 8, 8, 1] (-1: any) but got [1, 4, 16, 1]"),
    (request_for(GOOD[0]), INVALID, "expected shape [-1, 8, 8, 1]"),
    (request_for(np.zeros((0, *SHAPE), np.float32)), INVALID, "the batch is empty"),
    (request_for(NAN), INVALID, "values must be finite; found NaN"),
    (request_for(INF), INVALID, "values must be finite; found Inf"),
    (request_for(GOOD * 3), INVALID, "values must lie in [0, 1]"),
    (request_for(GOOD - 2), INVALID, "values must lie in [0, 1]"),
    (_with(dims=[2, *SHAPE]), INVALID, "tensor parsing error: inputs"),
    (_with(dims=[-1, *SHAPE]), INVALID, "must be fully known"),
    (_with(dims=[10**6, *SHAPE], float_val=[0.5]), EXHAUSTED, "exceeds the limit of 200000 bytes"),
    (_with(signature_name="nope"), PRECONDITION, 'Serving signature key "nope" not found.'),
    (_with(signature_name="__saved_model_init_op"), PRECONDITION, "not found"),
    (_with(name="nope"), NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (request_for(GOOD, "robustness", version=9), NOT_FOUND, "Servable not found for request: Specific(clf, 9)"),
    (_with(label="stable"), INVALID, "Unrecognized servable version label: stable"),
    (request_for(np.full((1000, *SHAPE), 0.5, np.float32)), EXHAUSTED, "larger than max"),  # 256 kB > 200 kB
]


@pytest.mark.parametrize("request_,code,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_predict_gets_tf_serving_code(stub, request_, code, message):
    got_code, details = rpc_error(stub.Predict, request_)
    assert got_code == code and message in details, (got_code, details)


def test_output_filter_and_metadata_errors(stub):
    request = request_for(GOOD, "robustness")
    request.output_filter.append("nope")
    code, details = rpc_error(stub.Predict, request)
    assert code == INVALID and details.startswith("output tensor alias not found in signature: nope")
    request.output_filter[:] = ["margin", "margin"]
    assert rpc_error(stub.Predict, request) == (INVALID, "duplicate output tensor alias: margin")
    meta = get_model_metadata_pb2.GetModelMetadataRequest()
    meta.model_spec.name = "clf"
    assert rpc_error(stub.GetModelMetadata, meta) == (
        INVALID, "GetModelMetadataRequest must specify at least one metadata_field")
    meta.metadata_field.append("graph")
    assert rpc_error(stub.GetModelMetadata, meta) == (INVALID, "Metadata field graph is not supported")
    meta.metadata_field[:] = ["signature_def"]
    meta.model_spec.version.value = 3
    assert rpc_error(stub.GetModelMetadata, meta) == (NOT_FOUND, "Servable not found for request: Specific(clf, 3)")
    code, details = rpc_error(stub.Classify, classification_pb2.ClassificationRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in details


def test_server_keeps_serving_after_bad_requests(running, stub, base):
    for request, _, _ in BAD:
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, timeout=30)
    out = GrpcClient(running.grpc_target, "clf").robustness(GOOD)
    np.testing.assert_allclose(out["margin"], reference(base, GOOD, "robustness")["margin"], **TOL)
    assert RestClient(running.url, "clf").status()["model_version_status"][0]["state"] == "AVAILABLE"


# -- batching, load, command line ----------------------------------------------------------------


def test_rest_and_grpc_share_batchers(running, base):
    """Concurrent REST and gRPC requests for one signature go through one batcher, and each
    gets its own rows back."""
    x = images(16, seed=11)
    ref = reference(base, x, "robustness")
    rest, rpc = RestClient(running.url, "other"), GrpcClient(running.grpc_target, "other")

    def one(i):
        return (rest if i % 2 else rpc).robustness(x[i:i + 1])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(len(x))))
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out["effective_margin"][0], ref["effective_margin"][i], **TOL)
    (batcher,) = [b for k, b in running.app.state.batchers.items() if k[0] == "other" and k[3] == "robustness"]
    assert batcher.requests == len(x)  # both front-ends' requests, one batcher


def test_bounded_load_over_grpc(running, stub, base):
    x = images(8, seed=5)
    ref = reference(base, x, "robustness")["margin"]
    requests = [request_for(x[i:i + 1], "robustness") for i in range(len(x))]
    errors, wrong = [], []

    def worker(seed):
        for j in range(50):
            i = (seed + j) % len(x)
            try:
                response = stub.Predict(requests[i], timeout=30)
                if not np.allclose(tf.make_ndarray(response.outputs["margin"]), ref[i:i + 1], **TOL):
                    wrong.append(i)
            except grpc.RpcError as err:
                errors.append(err.code())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))
    assert errors == [] and wrong == []
    assert time.perf_counter() - start < 10


def test_client_table_is_the_same_over_grpc(running, tmp_path, capsys):
    np.save(tmp_path / "x.npy", images(4, seed=7))
    np.save(tmp_path / "y.npy", np.arange(4))
    common = ["--model", "clf", "--npy", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    assert cli.main(["client", "--url", running.url, *common]) == 0
    over_rest = capsys.readouterr().out
    assert cli.main(["client", "--grpc", running.grpc_target, *common]) == 0
    assert capsys.readouterr().out == over_rest and len(over_rest.splitlines()) == 1 + 4 + 1


def test_grpc_port_in_use_is_a_clear_error(base):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ValueError, match=f"cannot bind 127.0.0.1:{port} for gRPC"):
            server.start_server(server.ServerConfig({"m": str(base)}, port=0, grpc_port=port))
    finally:
        holder.close()


def test_cli_grpc_options(base, monkeypatch, capsys):
    from tfrobust import cli
    from tfrobust.cli import serve as serve_cli

    def config(*extra):
        parser, _ = cli.build_parser("serve")
        return serve_cli.config_from_args(parser.parse_args(["serve", "--model-base-path", str(base), *extra]))

    assert config().grpc_port == 8500 and config("--grpc-port", "0").grpc_port == 0
    assert config("--no-grpc").grpc_port is None
    assert cli.main(["serve", "--model-base-path", str(base), "--grpc-port", "-1"]) == 2
    assert "grpc_port=-1 must be in 0..65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config("--no-grpc", "--grpc-port", "1")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if not installed
    assert config().grpc_port is None and "gRPC port off" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs tensorflow-serving-api"):
        config("--grpc-port", "0")


def test_cli_serves_grpc_and_shuts_down_cleanly(base):
    bench = load_script(REPO / "benchmarks" / "serving_bench.py")
    with bench.ServerProcess({"clf": str(base)}, grpc=True) as proc:
        assert proc.grpc_target and proc.grpc_target.startswith("127.0.0.1:")
        out = GrpcClient(proc.grpc_target, "clf").robustness(images(2))
        assert out["logits"].shape == (2, 10)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(timeout=30) == 0  # both ports closed, exit status 0


def test_mutated_requests_get_a_known_code_and_the_server_stays_up(running, stub):
    """200 valid protos with random dtypes (known and unknown enum values), shapes, contents and
    specs: every answer is OK or one of TF Serving's request codes, never INTERNAL or UNKNOWN.
    Then raw bytes that are no PredictRequest at all; the server still answers afterwards."""
    rng = np.random.default_rng(0)
    allowed = {grpc.StatusCode.OK, INVALID, NOT_FOUND, PRECONDITION, EXHAUSTED}
    seen = set()
    for _ in range(200):
        request = request_for(GOOD, str(rng.choice(["", "robustness", "serving_default", "x"])))
        tensor = request.inputs["inputs"]
        if rng.random() < 0.5:
            tensor.dtype = int(rng.choice([0, 1, 2, 3, 7, 9, 10, 19, 99]))
        if rng.random() < 0.5:
            del tensor.tensor_shape.dim[:]
            for _ in range(rng.integers(0, 6)):
                tensor.tensor_shape.dim.add().size = int(rng.choice([-1, 0, 1, 2, 8, 3, 2**40]))
        if rng.random() < 0.4:
            tensor.tensor_content = rng.bytes(int(rng.integers(0, 600)))
        if rng.random() < 0.3:
            tensor.float_val.extend(rng.uniform(-1, 2, int(rng.integers(0, 70))).tolist())
        if rng.random() < 0.2:
            tensor.tensor_shape.unknown_rank = True
        if rng.random() < 0.2:
            request.model_spec.version.value = int(rng.integers(-2, 3))
        try:
            stub.Predict(request, timeout=30)
            seen.add(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            assert err.code() in allowed, (err.code(), err.details(), request)
            seen.add(err.code())
    assert {grpc.StatusCode.OK, INVALID, PRECONDITION} <= seen
    raw = grpc.insecure_channel(running.grpc_target).unary_unary("/tensorflow.serving.PredictionService/Predict")
    for size in (1, 7, 100, 5000):
        with pytest.raises(grpc.RpcError):
            raw(b"\xff" * size, timeout=30)
    assert GrpcClient(running.grpc_target, "clf").robustness(GOOD)["margin"].shape == (1,)


def test_broken_version_is_end_over_grpc_and_not_found_for_predict(tmp_path):
    base = tmp_path / "m"
    export.export_saved_model(small_cnn(0), base)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a saved model")
    with server.start_server(server.ServerConfig({"m": str(base)}, port=0, grpc_port=0)) as s:
        channel = grpc.insecure_channel(s.grpc_target)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "m"
        states = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        by_version = {v.version: v for v in states.model_version_status}
        assert by_version[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert by_version[2].state == get_model_status_pb2.ModelVersionStatus.END
        assert by_version[2].status.error_code == 2 and by_version[2].status.error_message  # UNKNOWN, why
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert rpc_error(stub.Predict, request_for(GOOD, model="m", version=2)) == (
            NOT_FOUND, "Servable not found for request: Specific(m, 2)")
        assert stub.Predict(request_for(GOOD, model="m"), timeout=30).model_spec.version.value == 1
        channel.close()
