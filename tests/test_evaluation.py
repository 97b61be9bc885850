"""Evaluation: worst case per example, eps=0 identity, sanity checks that catch masking."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, evaluation
from tfrobust.cli import main


def trained_linear(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 4, 4, 1)).astype("float32")
    w = rng.normal(size=(16, 3)).astype("float32")
    y = (x.reshape(n, -1) @ w).argmax(-1)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w * 5, np.zeros(3, "float32")])
    return model, x, y


def test_eps_zero_gives_clean_accuracy_and_schema():
    model, x, y = trained_linear()
    res = evaluation.evaluate_model(model, x, y, attacks=["fgsm", "bim", "pgd", "cw"], eps="0",
                                    progress=False)
    for name in ("fgsm", "bim", "pgd", "cw"):
        assert res["attacks"][name]["0"] == res["clean_accuracy"]
    assert res["worst_case"]["0"] == res["clean_accuracy"] == 1.0
    assert set(res) >= {"n", "seed", "clean_accuracy", "attacks", "worst_case", "sanity",
                        "settings", "seconds"}
    json.dumps(res)


def test_worst_case_is_per_example_over_attacks():
    model, x, y = trained_linear()
    res = evaluation.evaluate_model(model, x, y, attacks=["fgsm", "cw"], eps="0.05,0.1",
                                    steps=5, step_size=0.02, sanity=False, progress=False)
    for key, eps in (("0.05", 0.05), ("0.1", 0.1)):
        ok = np.ones(len(x), bool)
        for adv in (attacks.fgsm(model, x, y, eps=eps),
                    attacks.cw(model, x, y, eps=eps, steps=5, step_size=0.02)):
            ok &= model(adv).numpy().argmax(-1) == y
        assert res["worst_case"][key] == pytest.approx(ok.mean())
        assert res["worst_case"][key] <= min(res["attacks"]["fgsm"][key], res["attacks"]["cw"][key])
    assert res["attacks"]["cw"]["0.1"] < res["attacks"]["cw"]["0.05"] < 1.0


def test_sanity_passes_for_an_honest_model():
    model, x, y = trained_linear()
    res = evaluation.evaluate_model(model, x, y, attacks=["fgsm", "bim"], eps="0.05,0.1,0.2",
                                    progress=False)
    assert res["sanity"]["passed"], res["sanity"]


def test_sanity_flags_a_gradient_masked_model():
    model, x, y = trained_linear()
    # Gradients are stopped at the input: attacks cannot move, as with a masked defence.
    masked = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Lambda(tf.stop_gradient),
                               keras.layers.Flatten(), keras.layers.Dense(3)])
    masked.layers[-1].set_weights(model.layers[-1].get_weights())
    res = evaluation.evaluate_model(masked, x, y, attacks=["fgsm", "bim"], eps="0.1,0.3",
                                    progress=False)
    failed = {c["name"] for c in res["sanity"]["checks"] if not c["passed"]}
    assert not res["sanity"]["passed"]
    assert {"unbounded_attack_reaches_zero", "gradients_not_vanishing"} <= failed


def test_sanity_check_logic_on_made_up_results():
    result = {"clean_accuracy": 0.9,
              "attacks": {"fgsm": {"0.1": 0.5, "0.2": 0.6}, "bim": {"0.1": 0.7, "0.2": 0.1}}}
    out = evaluation.sanity_checks(result, {"0.1": 0.1, "0.2": 0.2})
    by = {c["name"]: c for c in out["checks"]}
    assert not by["accuracy_falls_with_eps"]["passed"] and "fgsm at eps 0.2" in \
        by["accuracy_falls_with_eps"]["detail"]
    assert not by["iterative_not_weaker_than_fgsm"]["passed"] and "eps 0.1" in \
        by["iterative_not_weaker_than_fgsm"]["detail"]


def test_parse_eps_list():
    assert evaluation.parse_eps_list("0.1, 8/255") == [("0.1", 0.1), ("8/255", 8 / 255)]
    for bad in ("-0.1", "abc", "1/0", "inf"):
        with pytest.raises(ValueError, match="eps"):
            evaluation.parse_eps_list(bad)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from tfrobust import data, models
    x, y = data.load("digits", "train")
    model = models.RobustModel(models.linear_classifier((8, 8, 1), 10))
    model.compile(optimizer=keras.optimizers.Adam(0.05), metrics=["accuracy"])
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("m") / "digits.keras"
    model.save(path)
    return path


def test_cli_evaluate_writes_the_json(digits_model, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "100",
                 "--attacks", "fgsm,bim", "--eps", "0.05,0.1", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["model"] == str(digits_model) and res["dataset"] == "digits" and res["n"] == 100
    assert list(res["attacks"]["bim"]) == ["0.05", "0.1"]
    assert res["clean_accuracy"] > 0.8
    assert res["worst_case"]["0.1"] <= res["attacks"]["fgsm"]["0.1"]
    assert "worst case" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--eps", "-0.1"], "'-0.1'"),
    (["--attacks", "fgsm,deepfool"], "'deepfool'"),
    (["--dataset", "imagenet"], "'imagenet'"),
    (["--n", "0"], "--n=0"),
    (["--dataset", "mnist_missing_model"], "mnist_missing_model"),
])
def test_cli_evaluate_bad_input_is_one_line_error(digits_model, args, needle, capsys):
    base = {"--model": str(digits_model), "--dataset": "digits"}
    argv = ["evaluate"]
    for flag, value in base.items():
        if flag not in args:
            argv += [flag, value]
    code = main(argv + args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1


def test_cli_evaluate_missing_model(capsys):
    assert main(["evaluate", "--model", "/nonexistent/m.keras", "--dataset", "digits"]) == 2
    assert "/nonexistent/m.keras" in capsys.readouterr().err
