"""Evaluation: worst case per example, eps=0 identity, sanity checks that catch masking."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, evaluation
from tfrobust.evaluation import cascade
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
                                    budget=evaluation.Budget(steps=5, step_size=0.02), sanity=False, progress=False)
    for key, eps in (("0.05", 0.05), ("0.1", 0.1)):
        ok = np.ones(len(x), bool)
        for adv in (attacks.fgsm(model, x, y, eps=eps),
                    attacks.cw(model, x, y, eps=eps, steps=5, step_size=0.02)):
            ok &= model(adv).numpy().argmax(-1) == y
        assert res["worst_case"][key] == pytest.approx(ok.mean())
        assert res["worst_case"][key] <= min(res["attacks"]["fgsm"][key], res["attacks"]["cw"][key])
    assert res["attacks"]["cw"]["0.1"] < res["attacks"]["cw"]["0.05"] < 1.0


def test_budget_keywords_of_0_1_still_work_with_a_deprecation_warning():
    """evaluate_model(steps=...) warns, names budget=Budget(...), and reports what budget= reports."""
    model, x, y = trained_linear(n=40)
    kwargs = dict(attacks=["bim", "apgd-ce"], eps="0.05", sanity=False, progress=False)
    new = evaluation.evaluate_model(model, x, y, budget=evaluation.Budget(steps=3, step_size=0.02, apgd_steps=4),
                                    **kwargs)
    with pytest.warns(DeprecationWarning, match=r"budget=Budget\(steps=3, step_size=0.02, apgd_steps=4\)"):
        old = evaluation.evaluate_model(model, x, y, steps=3, step_size=0.02, apgd_steps=4, **kwargs)
    assert old["attacks"] == new["attacks"] and old["settings"] == new["settings"]
    assert new["settings"]["bim"]["steps"] == 3 and new["settings"]["apgd-ce"]["steps"] == 4
    with pytest.raises(TypeError, match="not both"):
        evaluation.evaluate_model(model, x, y, budget=evaluation.Budget(), steps=3, **kwargs)
    with pytest.raises(TypeError, match="'stepz'"):
        evaluation.evaluate_model(model, x, y, stepz=3, **kwargs)
    square = r"norm='l2': the square attack \(also part of autoattack\) supports only linf"
    with pytest.raises(ValueError, match=square):
        evaluation.evaluate_model(model, x, y, attacks=["autoattack"], eps="0.05",
                                  budget=evaluation.Budget(norm="l2"), progress=False)


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


# --- strong evaluation: APGD / Square cascade, masking and seed checks --------------------------

def test_expand_attacks():
    assert evaluation.expand_attacks(["fgsm", "autoattack-lite"]) == (
        ["fgsm", "apgd-ce", "apgd-dlr", "square"], ["apgd-ce", "apgd-dlr", "square"])
    # The standard AutoAttack (Croce & Hein 2020).
    assert evaluation.expand_attacks(["autoattack"]) == (
        ["apgd-ce", "apgd-t", "fab-t", "square"], ["apgd-ce", "apgd-t", "fab-t", "square"])
    # A name the cascade already holds adds nothing; without autoattack names run standalone.
    assert evaluation.expand_attacks(["square", "autoattack-lite"]) == (
        ["apgd-ce", "apgd-dlr", "square"], ["apgd-ce", "apgd-dlr", "square"])
    assert evaluation.expand_attacks(["apgd-ce", "square"]) == (["apgd-ce", "square"], [])
    assert evaluation.expand_attacks(["pgd", "square", "pgd"], cascade=True) == (
        ["pgd", "square"], ["pgd", "square"])
    with pytest.raises(ValueError, match="'deepfool'"):
        evaluation.expand_attacks(["deepfool"])


def test_run_cascade_attacks_only_the_survivors():
    rng = np.random.default_rng(0)
    clean = rng.random(50) < 0.9
    outcomes = [rng.random(50) < p for p in (0.7, 0.8, 0.9)]  # per-example result of each attack
    seen = []

    def stage(k):
        def run(idx):
            seen.append(idx.copy())
            return outcomes[k][idx]
        return run

    masks = evaluation.run_cascade([stage(0), stage(1), stage(2)], clean)
    alive = clean.copy()
    for k, (idx, mask) in enumerate(zip(seen, masks)):
        np.testing.assert_array_equal(idx, np.flatnonzero(alive))  # only still-correct examples
        alive = alive & outcomes[k]
        np.testing.assert_array_equal(mask, alive)
    # The last mask is the per-example AND of clean correctness and every attack.
    np.testing.assert_array_equal(masks[-1], clean & outcomes[0] & outcomes[1] & outcomes[2])
    # A stage with nobody left is not called.
    seen.clear()
    evaluation.run_cascade([stage(0)], np.zeros(50, bool))
    assert seen == []


def test_autoattack_cascade_wiring_and_worst_case(monkeypatch):
    model, x, y = trained_linear(n=200)
    calls = []
    original = cascade.correct_under

    def recording(clf, config, xb, yb, *args, **kwargs):
        out = original(clf, config, xb, yb, *args, **kwargs)
        calls.append((config.name, config.loss, config.eps, len(xb), out))
        return out

    monkeypatch.setattr(cascade, "correct_under", recording)
    res = evaluation.evaluate_model(model, x, y, attacks=["fgsm", "autoattack-lite"], eps="0.05,0.1",
                                    budget=evaluation.Budget(apgd_steps=10, square_queries=100), sanity=False,
                                    progress=False)
    assert list(res["attacks"]) == ["fgsm", "apgd-ce", "apgd-dlr", "square"]
    for key, eps in (("0.05", 0.05), ("0.1", 0.1)):
        mine = {(name, loss): (size, out) for name, loss, e, size, out in calls if e == eps}
        alive = np.ones(len(x), bool)  # clean accuracy is 1 on this model
        for stage, name in ((("apgd", "ce"), "apgd-ce"), (("apgd", "dlr"), "apgd-dlr"),
                            (("square", "ce"), "square")):
            size, out = mine[stage]
            assert size == alive.sum()  # each stage sees only the survivors of the earlier ones
            alive[alive] = out
            assert res["attacks"][name][key] == pytest.approx(alive.mean())
        fgsm_ok = mine[("fgsm", "ce")][1]
        assert res["worst_case"][key] == pytest.approx((alive & fgsm_ok).mean())
        acc = res["attacks"]
        assert acc["square"][key] <= acc["apgd-dlr"][key] <= acc["apgd-ce"][key]
    assert res["settings"]["apgd-dlr"]["cascade"]["stage"] == 2
    assert res["settings"]["square"]["queries"] == 100 and res["settings"]["apgd-ce"]["steps"] == 10
    json.dumps(res)


def test_strong_evaluation_passes_the_sanity_checks_on_an_honest_model():
    model, x, y = trained_linear(n=200)
    res = evaluation.evaluate_model(model, x, y, attacks=["autoattack-lite"], eps="0.05,0.1",
                                    budget=evaluation.Budget(apgd_steps=10, square_queries=100), progress=False)
    by = {c["name"]: c for c in res["sanity"]["checks"]}
    assert res["sanity"]["passed"], res["sanity"]
    assert {"white_box_not_weaker_than_square", "stable_across_seeds"} <= set(by)
    assert "on 200 examples" in by["stable_across_seeds"]["detail"]
    # The cascade is at least as strong as PGD alone.
    pgd = evaluation.evaluate_model(model, x, y, attacks=["pgd"], eps="0.05,0.1", sanity=False,
                                    progress=False)
    for key in ("0.05", "0.1"):
        assert res["worst_case"][key] <= pgd["worst_case"][key] + 1e-9


def test_masking_check_flags_square_beating_the_white_box_attacks():
    model, x, y = trained_linear(n=200)
    masked = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Lambda(tf.stop_gradient),
                               keras.layers.Flatten(), keras.layers.Dense(3)])
    masked.layers[-1].set_weights(model.layers[-1].get_weights())
    res = evaluation.evaluate_model(masked, x, y, attacks=["autoattack-lite"], eps="0.1",
                                    budget=evaluation.Budget(apgd_steps=10, square_queries=200), progress=False)
    by = {c["name"]: c for c in res["sanity"]["checks"]}
    assert not by["white_box_not_weaker_than_square"]["passed"]
    assert "square broke" in by["white_box_not_weaker_than_square"]["detail"]
    assert res["attacks"]["square"]["0.1"] < res["attacks"]["apgd-dlr"]["0.1"] - 0.2
    assert res["worst_case"]["0.1"] == res["attacks"]["square"]["0.1"]


def test_new_sanity_checks_on_made_up_results():
    result = {"clean_accuracy": 0.9,
              "attacks": {"apgd-ce": {"0.1": 0.6}, "square": {"0.1": 0.4}}}
    by = {c["name"]: c for c in evaluation.sanity_checks(result, {"0.1": 0.1})["checks"]}
    assert not by["white_box_not_weaker_than_square"]["passed"]  # from the accuracies alone
    by = {c["name"]: c for c in evaluation.sanity_checks(
        result, {"0.1": 0.1}, black_box_gain={"0.1": 0.005})["checks"]}
    assert by["white_box_not_weaker_than_square"]["passed"]  # per example: Square added only 0.5%
    seed = {"eps": "0.1", "m": 200, "seed": 0, "accuracy": 0.50, "changed": 12,
            "tolerance": evaluation.seed_tolerance(200), "what": "worst case"}
    for rerun, passed in ((0.52, True), (0.45, False)):
        out = evaluation.sanity_checks(result, {"0.1": 0.1}, seed_check={**seed, "accuracy_rerun": rerun})
        by = {c["name"]: c for c in out["checks"]}
        assert by["stable_across_seeds"]["passed"] is passed
        assert "seed 1" in by["stable_across_seeds"]["detail"]


def test_seed_tolerance_is_three_sigma_for_five_percent_seed_dependent_examples():
    assert evaluation.seed_tolerance(200) == pytest.approx(3 * np.sqrt(0.05 / 400))
    assert evaluation.seed_tolerance(100) > evaluation.seed_tolerance(200) > evaluation.seed_tolerance(1000)
    # Simulated: 5% of the examples survive with probability 1/2, the rest are fixed.
    rng = np.random.default_rng(0)
    m = 200
    fixed = rng.random(m) < 0.5
    coin = np.arange(m) < m // 20
    runs = [np.where(coin, rng.random((2000, m)) < 0.5, fixed) for _ in range(2)]
    diff = np.abs(runs[0].mean(1) - runs[1].mean(1))
    assert (diff > evaluation.seed_tolerance(m)).mean() < 0.01


def test_cli_evaluate_autoattack_cascade(digits_model, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "60",
                 "--attacks", "fgsm,autoattack-lite", "--eps", "0.1", "--apgd-steps", "5",
                 "--square-queries", "30", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert list(res["attacks"]) == ["fgsm", "apgd-ce", "apgd-dlr", "square"]
    assert res["settings"]["square"]["cascade"]["of"] == ["apgd-ce", "apgd-dlr", "square"]
    assert res["worst_case"]["0.1"] <= res["attacks"]["square"]["0.1"]
    names = {c["name"] for c in res["sanity"]["checks"]}
    assert {"white_box_not_weaker_than_square", "stable_across_seeds"} <= names
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits", "--n", "40",
                 "--attacks", "pgd,apgd-dlr", "--cascade", "--eps", "0.1", "--apgd-steps", "3",
                 "--no-sanity", "--json", str(out)])
    res = json.loads(out.read_text())
    assert code == 0 and res["settings"]["apgd-dlr"]["cascade"]["stage"] == 2
    assert res["worst_case"]["0.1"] == res["attacks"]["apgd-dlr"]["0.1"]


@pytest.mark.parametrize("args,needle", [
    (["--attacks", "square", "--norm", "l2"], "--norm=l2"),
    (["--attacks", "autoattack", "--apgd-steps", "0"], "--apgd-steps=0"),
    (["--attacks", "square", "--square-queries", "0"], "--square-queries=0"),
])
def test_cli_evaluate_strong_attacks_bad_input(digits_model, args, needle, capsys):
    code = main(["evaluate", "--model", str(digits_model), "--dataset", "digits"] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_apgd_t_runs_each_target_on_the_survivors(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(120, 4, 4, 1)).astype("float32")
    w = rng.normal(size=(16, 5)).astype("float32")
    y = (x.reshape(120, -1) @ w).argmax(-1)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    model.layers[-1].set_weights([w * 5, np.zeros(5, "float32")])
    calls = []
    original = cascade.correct_under

    def recording(clf, config, xb, yb, *args, **kwargs):
        out = original(clf, config, xb, yb, *args, **kwargs)
        calls.append((config.target_rank, len(xb), out))
        return out

    monkeypatch.setattr(cascade, "correct_under", recording)
    res = evaluation.evaluate_model(model, x, y, attacks=["apgd-ce", "apgd-t"], cascade=True, eps="0.05",
                                    budget=evaluation.Budget(apgd_steps=10, apgd_targets=3), sanity=False,
                                    progress=False)
    alive = np.asarray(calls[0][2])  # after APGD-CE (clean accuracy is 1 on this model)
    assert [c[0] for c in calls] == [None, 2, 3, 4]
    for _rank, size, out in calls[1:]:
        assert size == alive.sum()  # each target sees only what the earlier ones left
        alive[alive] = out
    assert res["attacks"]["apgd-t"]["0.05"] == pytest.approx(alive.mean())
    assert res["attacks"]["apgd-t"]["0.05"] <= res["attacks"]["apgd-ce"]["0.05"]
    assert res["settings"]["apgd-t"]["targets"] == 3
    with pytest.raises(ValueError, match="apgd-t needs at least 4 classes"):
        evaluation.evaluate_model(*trained_linear(n=10), attacks=["apgd-t"], eps="0.1", sanity=False,
                                  progress=False)
    with pytest.raises(ValueError, match="apgd_targets=0"):
        evaluation.evaluate_model(model, x, y, attacks=["apgd-t"], eps="0.1",
                                  budget=evaluation.Budget(apgd_targets=0),
                                  progress=False)


def test_registry_reports_the_settings_that_ran():
    """The report reads each attack's settings off the configs the registry builds."""
    from tfrobust.attacks import CASCADES, EVAL_ATTACK_REGISTRY, Budget, eval_attack
    budget = Budget(steps=7, step_size={"bim": 0.05}, apgd_steps=11, square_queries=13, apgd_targets=3)
    assert set(evaluation.EVAL_ATTACKS) == set(EVAL_ATTACK_REGISTRY) | set(CASCADES)
    s = {name: eval_attack(name).settings(budget) for name in EVAL_ATTACK_REGISTRY}
    assert s["bim"] == {"norm": "linf", "loss": "ce", "random_start": False, "steps": 7, "step_size": 0.05}
    assert s["pgd"]["random_start"] and s["pgd"]["step_size"] == "2.5*eps/steps"
    assert s["cw"]["loss"] == "cw" and "steps" not in s["fgsm"]
    assert s["apgd-t"]["targets"] == 3 and s["apgd-t"]["loss"] == "targeted dlr" and s["apgd-ce"]["steps"] == 11
    assert s["square"]["queries"] == 13 and s["square"]["black_box"] and s["square"]["loss"] == "margin"
    configs = eval_attack("apgd-t").configs(0.1, budget)
    assert [c.target_rank for c in configs] == [2, 3, 4] and all(c.eps == 0.1 for c in configs)
    flags = {name: (a.iterative, a.randomised, a.black_box) for name, a in EVAL_ATTACK_REGISTRY.items()}
    assert flags["fgsm"] == (False, False, False) and flags["square"] == (False, True, True)
    assert s["fab-t"]["targets"] == 9 and s["fab-t"]["steps"] == 100 and s["fab-t"]["minimal_norm"]
    assert [c.target_rank for c in eval_attack("fab-t").configs(0.1, Budget(fab_targets=2))] == [2, 3]
    assert s["fmn"]["loss"] == "margin" and s["fab"]["loss"] == "linearised boundary"
    with pytest.raises(ValueError, match="'deepfool'"):
        eval_attack("deepfool")
    with pytest.raises(ValueError, match="steps=0"):
        Budget(steps=0)


def test_one_trace_per_attack_serves_every_eps(caplog):
    """eps and the step travel as tensors: six eps values of four attacks trace four steps."""
    import logging
    model, x, y = trained_linear(n=45)
    y[:3] = (y[:3] + 1) % 3  # three misclassified: each stage attacks batches of 20, 20 and 2
    with caplog.at_level(logging.WARNING):
        res = evaluation.evaluate_model(model, x, y, attacks=["fgsm", "bim", "cw", "pgd"],
                                        eps="0.05,0.1,0.15,0.2,0.25,0.3", batch_size=20,
                                        budget=evaluation.Budget(step_size={"bim": 0.1, "cw": 0.1, "pgd": None}),
                                        progress=False)
    # TF's retracing warning counts the traces of one code object across the whole process, so
    # the step closures of earlier tests' models (apgd-t traces one per target) trigger it here or
    # not depending on test order; those steps' traces are counted exactly below instead.
    others = [r.getMessage() for r in caplog.records
              if "retracing" in r.getMessage() and "_compiled_check.<locals>.step" not in r.getMessage()]
    assert others == []
    traced = [f for f in cascade._COMPILED[model].values()]
    assert len(traced) == 5  # four attacks and the sanity check's unbounded PGD
    assert all(f.experimental_get_tracing_count() == 1 for f in traced)
    assert res["settings"]["bim"]["step_size"] == 0.1
