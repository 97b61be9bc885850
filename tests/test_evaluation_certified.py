"""Verified accuracy beside the attacks: its closed form on a linear model, the soundness check, the CLI."""

import json

import numpy as np
import pytest

from tfrobust import evaluation
from tfrobust.cli import main

from test_evaluation import digits_model, trained_linear  # noqa: F401  (a pytest fixture)


def linear_verified(model, x, y, eps):
    """Closed form for a linear model in the clip box [0, 1]: min over the box of each margin."""
    w, b = (v.numpy().astype(np.float64) for v in model.layers[-1].weights)
    flat = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = np.maximum(flat - eps, 0), np.minimum(flat + eps, 1)
    ok = []
    for i in range(len(x)):
        v = w[:, [y[i]]] - w
        worst = np.minimum(v * lo[i][:, None], v * hi[i][:, None]).sum(0) + b[y[i]] - b
        ok.append(np.all(np.delete(worst, y[i]) > 0))
    return np.array(ok)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_verified_accuracy_is_the_closed_form_and_below_the_attacks(method):
    model, x, y = trained_linear(200)
    res = evaluation.evaluate_model(model, x, y, attacks=["pgd", "cw"], eps="0,0.02,0.05",
                                    budget=evaluation.Budget(steps=20),
                                    certify=method, progress=False)
    for key, eps in (("0", 0.0), ("0.02", 0.02), ("0.05", 0.05)):
        assert res["verified"][key] == pytest.approx(linear_verified(model, x, y, eps).mean())
        assert res["verified"][key] <= res["worst_case"][key]
    assert res["verified"]["0"] == res["clean_accuracy"]
    assert 0 < res["verified"]["0.05"] < res["verified"]["0.02"]
    check = [c for c in res["sanity"]["checks"] if c["name"] == "verified_within_worst_case"]
    assert check and check[0]["passed"] and res["settings"]["certify"]["method"] == method
    assert "verified" in evaluation.format_table(res)


def test_soundness_check_fails_on_a_verified_example_an_attack_broke():
    verified = {"0.1": np.array([True, True, False]), "0.3": np.array([True, False, False])}
    robust = {"0.1": np.array([True, True, True]), "0.3": np.array([False, False, False])}
    check = evaluation.soundness_check(verified, robust)
    assert not check["passed"] and "1 at eps 0.3" in check["detail"]
    assert evaluation.soundness_check(verified, {k: v | True for k, v in robust.items()})["passed"]


def test_certify_rejects_bad_settings():
    model, x, y = trained_linear(20)
    with pytest.raises(ValueError, match="'crown'"):
        evaluation.evaluate_model(model, x, y, attacks=["fgsm"], eps="0.1", certify="crown", progress=False)
    with pytest.raises(ValueError, match="norm='l2'"):
        evaluation.evaluate_model(model, x, y, attacks=["fgsm"], eps="0.1", budget=evaluation.Budget(norm="l2"),
                                  certify="ibp",
                                  progress=False)


def test_cli_evaluate_certify(digits_model, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "100",
                 "--attacks", "pgd", "--eps", "0.01,0.05", "--certify", "crown-ibp", "--no-sanity",
                 "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert list(res["verified"]) == ["0.01", "0.05"]
    assert all(res["verified"][k] <= res["worst_case"][k] for k in res["verified"])
    assert "verified" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--certify", "crown"])
    assert exit_info.value.code == 2 and "'crown'" in capsys.readouterr().err


def test_certified_curve_is_the_verified_accuracy_at_every_eps(tmp_path):
    model, x, y = trained_linear(120)
    res = evaluation.evaluate_model(model, x, y, attacks=["pgd"], eps="0.02,0.05",
                                    budget=evaluation.Budget(steps=20), certify="ibp",
                                    curve="certified-ibp", sanity=False, progress=False)
    curve = res["curve"]
    assert curve["attack"] == "certified-ibp" and not curve["disagreements"]
    for key in ("0.02", "0.05"):  # the radius is within 1/512 below the provable one: same verdicts here
        assert abs(curve["at_eps"][key] - res["verified"][key]) <= 2 / len(x)
    assert all(a >= b for a, b in zip(curve["accuracy"], curve["accuracy"][1:]))
    evaluation.plot_curve(curve, tmp_path / "c.png", worst_case=res["worst_case"], eps_values={"0.02": 0.02})
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="norm='l2'"):
        evaluation.evaluate_model(model, x, y, attacks=["pgd"], eps="0.1", budget=evaluation.Budget(norm="l2"),
                                  curve="certified-ibp",
                                  progress=False)
