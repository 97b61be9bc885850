"""Tests of tfrobust.serving.client and `tfrobust client` (REST against the local server, gRPC
against a stand-in PredictionService) and the export -> serve -> client round trip."""

import os
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("fastapi")

from tfrobust import cli  # noqa: E402
from helpers import SHAPE, images, load_script, small_cnn  # noqa: E402
from tfrobust.serving import export, server  # noqa: E402
from tfrobust.serving.client import GrpcClient, RestClient, RestError, format_scores, score_images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "clf"
    export.export_saved_model(small_cnn(0), path, norm="linf")
    return path


@pytest.fixture(scope="module")
def url(base):
    with server.start_server(server.ServerConfig({"clf": str(base)}, port=0)) as s:
        yield s.url


def reference(base, x, signature):
    fn = tf.saved_model.load(str(base / "1")).signatures[signature]
    return {k: v.numpy() for k, v in fn(inputs=tf.constant(x)).items()}


# -- REST -------------------------------------------------------------------------------------


def test_rest_status_metadata_shape(url):
    c = RestClient(url, "clf")
    assert c.status()["model_version_status"][0]["state"] == "AVAILABLE"
    assert c.metadata()["model_spec"]["version"] == "1"
    assert c.input_shape() == SHAPE == c.input_shape("robustness")
    with pytest.raises(KeyError):
        c.input_shape("nope")


@pytest.mark.parametrize("row_format", [False, True])
def test_rest_predict_both_formats(url, base, row_format):
    c = RestClient(url, "clf")
    x = images(4)
    for signature in ("serving_default", "robustness"):
        out = c.predict(x, signature_name=signature, row_format=row_format)
        ref = reference(base, x, signature)
        assert set(out) == set(ref)
        for key in ref:
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-4, atol=1e-5)
    assert c.robustness(x)["predicted_class"].dtype.kind == "i"


def test_rest_errors(url):
    with pytest.raises(RestError) as err:
        RestClient(url, "missing").predict(images(1))
    assert err.value.status == 404 and "Latest(missing)" in err.value.message
    with pytest.raises(RestError) as err:
        RestClient(url, "clf").predict(np.zeros((1, 4, 4, 1)))
    assert err.value.status == 400 and "expected shape" in err.value.message
    with pytest.raises(RestError) as err:
        RestClient(url, "clf", version=5).status()
    assert err.value.status == 404
    with pytest.raises(ValueError):
        RestClient("127.0.0.1:8501")


def test_rest_client_reconnects_after_server_closes(url):
    c = RestClient(url, "clf")
    c.status()
    c._connection().sock.shutdown(socket.SHUT_RDWR)  # as if the server dropped the idle connection
    assert c.status()["model_version_status"]


def test_score_images_batches_and_formats(url, base):
    c = RestClient(url, "clf")
    x = images(7, seed=3)
    scores = score_images(c, x, batch_size=3)
    ref = reference(base, x, "robustness")
    np.testing.assert_allclose(scores["margin"], ref["margin"], rtol=1e-4, atol=1e-5)
    labels = ref["predicted_class"].copy()
    labels[0] = (labels[0] + 1) % 10
    table = format_scores(scores, labels)
    lines = table.splitlines()
    assert lines[0].split() == ["#", "pred", "prob", "label", "margin", "grad_norm", "eff_margin"]
    assert len(lines) == 1 + 7 + 1 and lines[1].split()[3].endswith("*")
    assert float(lines[2].split()[4]) == pytest.approx(ref["margin"][1], rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError):
        score_images(c, np.zeros((0, *SHAPE)))


def test_client_main_with_npy(url, tmp_path, capsys):
    x = images(5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(5))
    code = cli.main(["client", "--url", url, "--model", "clf", "--npy", str(tmp_path / "x.npy"),
                     "--labels", str(tmp_path / "y.npy"), "--n", "4"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].split()[:3] == ["#", "pred", "prob"] and len(out) == 1 + 4 + 1


def test_client_main_picks_dataset_by_shape(url, capsys):
    """8x8x1 models get scikit-learn's digits (shipped with scikit-learn)."""
    pytest.importorskip("sklearn")
    assert cli.main(["client", "--url", url, "--model", "clf", "--n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "label" in out[0] and len(out) == 1 + 3 + 1


def test_client_main_reports_errors(url, capsys):
    assert cli.main(["client", "--url", url, "--model", "nope", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfrobust client: error:") and "Latest(nope)" in err and len(err.strip().splitlines()) == 1


# -- gRPC against a stand-in PredictionService ---------------------------------------------------


@pytest.fixture(scope="module")
def grpc_target(base):
    grpc = pytest.importorskip("grpc")
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    loaded = tf.saved_model.load(str(base / "1"))
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((base / "1" / "saved_model.pb").read_bytes())
    seen = []

    class Servicer(apis.PredictionServiceServicer):
        """What TF Serving does for Predict and GetModelMetadata, for one model."""

        def Predict(self, request, context):
            seen.append(request)
            if request.model_spec.name != "clf":
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Servable not found for request: Latest({request.model_spec.name})")
            fn = loaded.signatures[request.model_spec.signature_name or "serving_default"]
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            for key, value in fn(**inputs).items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

        def GetModelMetadata(self, request, context):
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in saved.meta_graphs[0].signature_def.items():
                sig_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.metadata["signature_def"].Pack(sig_map)
            return response

    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    apis.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", seen
    grpc_server.stop(grace=None)


def test_grpc_predict_and_metadata(grpc_target, base):
    target, seen = grpc_target
    c = GrpcClient(target, "clf", version=1)
    x = images(3)
    out = c.robustness(x)
    ref = reference(base, x, "robustness")
    assert set(out) == set(ref)
    for key in ref:
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-6)
    request = seen[-1]
    assert request.model_spec.signature_name == "robustness" and request.model_spec.version.value == 1
    assert list(request.inputs) == ["inputs"]
    assert c.input_shape("robustness") == SHAPE
    c.close()


def test_grpc_unknown_model(grpc_target):
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        GrpcClient(grpc_target[0], "nope").predict(images(1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- the round trip, as a user runs it ---------------------------------------------------------


def test_export_serve_client_round_trip(tmp_path):
    """`tfrobust export`, then `tfrobust serve`, then `tfrobust client`."""
    bench = load_script(REPO / "benchmarks" / "serving_bench.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    model_path = tmp_path / "model.keras"
    small_cnn(seed=2).save(model_path)
    base = tmp_path / "models" / "digits"
    exported = subprocess.run([sys.executable, "-m", "tfrobust", "export", "--model", str(model_path),
                               "--out", str(base), "--norm", "linf"],
                              capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert exported.returncode == 0, exported.stderr[-2000:]
    x = images(4, seed=8)
    np.save(tmp_path / "x.npy", x)
    with bench.ServerProcess({"digits": str(base)}) as proc:
        scored = subprocess.run(
            [sys.executable, "-m", "tfrobust", "client", "--url", proc.url, "--model", "digits",
             "--npy", str(tmp_path / "x.npy")],
            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert scored.returncode == 0, scored.stderr[-2000:]
    lines = scored.stdout.strip().splitlines()
    assert lines[0].split() == ["#", "pred", "prob", "margin", "grad_norm", "eff_margin"]
    ref = export.robustness_outputs(keras.models.load_model(model_path), x, "linf")
    for i, line in enumerate(lines[1:]):
        fields = line.split()
        assert int(fields[1]) == int(ref["predicted_class"][i])
        assert float(fields[3]) == pytest.approx(float(ref["margin"][i]), rel=1e-3, abs=1e-4)
        assert float(fields[4]) == pytest.approx(float(ref["grad_norm"][i]), rel=1e-3)
