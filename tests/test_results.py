"""Committed results stay true: every benchmark JSON names its commit, and docs/results.md quotes them exactly."""

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = sorted((REPO / "benchmarks" / "results").glob("*.json"))
RESULTS_PAGE = (REPO / "docs" / "results.md").read_text()
sys.path.insert(0, str(REPO / "benchmarks"))


def load(name):
    return json.loads((REPO / "benchmarks" / "results" / name).read_text())


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_every_benchmark_result_records_its_commit_command_and_hardware(path):
    result = json.loads(path.read_text())
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", str(result.get("commit"))), result.get("commit")
    assert result.get("command") and result.get("hardware")


def test_every_result_the_results_page_cites_exists():
    cited = set(re.findall(r"benchmarks/results/([\w.]+\.json)", RESULTS_PAGE))
    assert cited, "docs/results.md cites no benchmark result"
    assert cited <= {p.name for p in RESULTS}, cited - {p.name for p in RESULTS}


def test_results_page_step_time_table_is_the_json():
    from step_time import readme_table
    table = readme_table(load("step_time.json"))
    assert table in RESULTS_PAGE, ("docs/results.md's step-time table differs from "
                                   "benchmarks/results/step_time.json:\n" + table)


def test_results_page_quoted_ratios_match_their_json():
    table1 = load("step_time_table1.json")["median_seconds"]
    assert f"costs {table1['pgd7_at_emr'] / table1['pgd_at_40']:.2f}x a PGD-40 step" in RESULTS_PAGE
    speed = load("attack_speed.json")
    assert f"0.{round(speed['ratios']['tfrobust_over_limit'] * 1000):03d} of the physical limit" in RESULTS_PAGE
    assert f"tfrobust {speed['ratios']['tfrobust_over_art']:.1f}x faster" in RESULTS_PAGE
    art = load("autoattack_vs_art.json")
    assert f"ours {art['speedup']:.2f}x faster" in RESULTS_PAGE
    ours = art["tfrobust"]
    assert f"reports **{ours['robust_accuracy']:.1%}** robust accuracy in {ours['seconds']:.0f} s" in RESULTS_PAGE
    serving = load("serving.json")["robustness_over_default"]
    assert (f"costs {serving['1']:.2f}x `serving_default` at batch 1 and {serving['64']:.2f}x at batch 64"
            in RESULTS_PAGE)


def test_results_page_smoothing_table_is_its_json():
    sys.path.insert(0, str(REPO / "training"))
    from smoothing_table import results_row
    table = json.loads((REPO / "training" / "results" / "smoothing" / "table.json").read_text())
    assert set(table) == {"mnist_smooth_025", "mnist_smooth_050"}
    for name, row in table.items():
        assert results_row(name, row) in RESULTS_PAGE, results_row(name, row)
        acc = list(row["test"]["certified_accuracy"].values())
        assert acc == sorted(acc, reverse=True)  # certified accuracy never rises with the radius
        assert re.fullmatch(r"[0-9a-f]{40}", row["commit"]) and row["hardware"] and row["command"]


def test_results_page_quotes_the_smoothing_comparison_with_art():
    art = load("smoothing_vs_art.json")
    s, t = art["summary"], art["seconds"]
    assert (art["sigma"], art["n0"], art["n"], art["alpha"], art["points"]) == (0.25, 100, 10000, 0.001, 100)
    assert f"trained for {art['model_epochs']} epochs only" in RESULTS_PAGE
    assert f"agrees on **{s['class_or_abstain_agree']:.0%} of the {s['points']} points**" in RESULTS_PAGE
    assert (f"max |Δr| {s['max_abs_radius_difference']:g}, median {s['median_abs_radius_difference']:g} "
            f"({s['at_radius_cap']['tfrobust']} and {s['at_radius_cap']['art']} points at the") in RESULTS_PAGE
    below = s["below_cap"]
    assert (f"on the {below['points']} points below the cap the median |Δr| is "
            f"{below['median_abs_radius_difference']:g} against a predicted") in RESULTS_PAGE
    assert f"the difference of {below['median_predicted_difference_sd']:g}" in RESULTS_PAGE
    assert s["share_within_3sd"] == 1.0  # "every point is within 3 predicted standard deviations"
    assert (f"ours {t['tfrobust']:.1f} s, ART {t['art']:.1f} s, **ours {art['speedup']:.2f}x faster** "
            f"(ours/ART {art['ratio_tfrobust_over_art']:.3f})") in RESULTS_PAGE
    assert f"about {t['forward_floor']:.1f} s" in RESULTS_PAGE
    large = load("smoothing_vs_art_n100k.json")
    ls = large["summary"]
    assert large["n"] == 100000 and ls["class_or_abstain_agree"] == 1.0
    assert (f"{ls['both_certified_same_class']} of {ls['points']} certified with the same class, max |Δr| "
            f"{ls['max_abs_radius_difference']:g}, ours {large['seconds']['tfrobust']:.1f} s against ART's "
            f"{large['seconds']['art']:.1f} s, **{large['speedup']:.2f}x faster**") in RESULTS_PAGE


def test_results_page_quotes_the_smoothed_signature_cost():
    ms = load("serving.json")["smoothed"]["ms_per_example"]
    assert f"costs **{ms['1']['smoothed']:.1f} ms per example** at batch 1" in RESULTS_PAGE


def test_results_page_quotes_the_evaluation_scaling_json():
    scaling = load("evaluation_scaling.json")
    assert scaling["identical"] is True
    assert f"evaluate **{scaling['speedup_2_workers']:.2f}x** as fast" in RESULTS_PAGE


def test_serving_readme_grpc_table_is_the_json():
    from serving_bench import grpc_readme_table

    block = load("serving.json")["grpc"]
    table = grpc_readme_table(block)
    text = (REPO / "serving" / "README.md").read_text()
    assert table in text, "serving/README.md's gRPC table differs from benchmarks/results/serving.json:\n" + table
    assert f"{block['load']['requests']:,} requests, {block['load']['errors']} errors" in text


def test_one_cpu_hour_recipe_is_the_validated_candidate_and_the_results_page_quotes_its_evaluation():
    from tfrobust.training import load_config

    recipe = load_config("mnist_one_cpu_hour")
    study = [json.loads(p.read_text()) for p in (REPO / "training" / "results" / "one_hour_study").glob("*.json")]
    pilots = [r for r in study if "recipe" in r]
    best = max(pilots, key=lambda r: r["validation"]["worst_case"]["0.3"])
    # The shipped recipe is the pilot that won on the held-out images, trained for longer.
    assert (best["recipe"]["objective"], best["recipe"]["model"]) == (recipe["objective"], recipe["model"])
    for r in pilots:  # the results page's pilot table is the study's JSONs
        v = r["validation"]
        assert (f"| {r['settings']['epochs']} | {100 * v['clean_accuracy']:.1f} | "
                f"{100 * v['worst_case']['0.3']:.1f} |") in RESULTS_PAGE, r["run"]
    result = json.loads((REPO / "training" / "results" / "one_cpu_hour" / "eval.json").read_text())
    assert result["recipe"] == "mnist_one_cpu_hour" and result["n"] >= 1000 and result["epochs_trained"] == \
        recipe["train"]["epochs"]
    assert result["train_seconds"] <= 3600 and result["split"] == "test" and result["sanity"]["passed"]
    assert f"trained in **{result['train_seconds']:,.0f} s" in RESULTS_PAGE
    assert (f"**{result['clean_accuracy']:.1%} clean and {result['worst_case']['0.3']:.1%} under the standard "
            "AutoAttack at eps 0.3**") in RESULTS_PAGE


def test_keep_best_study_is_quoted_and_the_recipe_follows_its_decision():
    """The one-CPU-hour recipe keeps the best robust epoch only if that won on the held-out images."""
    sys.path.insert(0, str(REPO / "training"))
    from keep_best_study import KEY, results_sentence
    from tfrobust.training import load_config
    report = json.loads((REPO / "training" / "results" / "keep_best" / "keep_best.json").read_text())
    assert not report["pilot"] and report["epochs"] == load_config("mnist_one_cpu_hour")["train"]["epochs"]
    check = report["best_keras_check"]  # best.keras is the model of the best monitored epoch
    assert check["clean_accuracy_on_monitor_images"] == pytest.approx(check["logged_at_best_epoch"], abs=1e-3)
    monitored = report["monitor_by_epoch"]
    assert max(monitored.values()) == report["best_monitored_value"] == monitored[str(report["best_monitored_epoch"])]
    best, last = (report["candidates"][k]["worst_case"]["0.3"] for k in ("best_epoch", "last_epoch"))
    gain = best - last
    assert report["winner"] == ("best_epoch" if gain > 0 else "last_epoch")
    assert results_sentence(report) in RESULTS_PAGE, results_sentence(report)
    assert load_config("mnist_one_cpu_hour").get("keep_best") == (KEY if report["winner"] == "best_epoch" else None)
    paired = json.loads((REPO / "training" / "results" / "keep_best" / "paired.json").read_text())
    for name, key in (("last_epoch", "robust_last_epoch"), ("best_epoch", "robust_best_epoch")):
        assert paired[key] == round(report["candidates"][name]["worst_case"]["0.3"] * paired["images"])
    assert (f"{paired['robust_only_under_best_epoch']} are robust only under the\nbest epoch and "
            f"{paired['robust_only_under_last_epoch']} only under the last (exact one-sided sign test "
            f"p = {paired['sign_test_one_sided_p']:.3f}") in RESULTS_PAGE


def test_results_page_certified_and_adaptive_tables_are_their_json():
    from helpers import load_script
    table = load_script(REPO / "training" / "certified_table.py")
    adaptive = load_script(REPO / "training" / "adaptive_study.py")
    rows = json.loads((REPO / "training" / "results" / "certified" / "table.json").read_text())
    assert rows, "no certified model in the table"
    for name, row in rows.items():
        assert row["sanity"]["passed"] and row["n_verified"] == 10000 and row["n_autoattack"] >= 1000
        assert all(row["verified"][k] <= row["verified_ibp"][k] + row["verified_crown_ibp"][k] for k in row["verified"])
        assert row["verified_on_autoattack_points"]["0.3"] <= row["autoattack"]["0.3"]  # sound: never above
        assert table.readme_row(name, row) in RESULTS_PAGE, name
    report = json.loads((REPO / "training" / "results" / "score_study" / "adaptive.json").read_text())
    assert adaptive.readme_rows(report) in RESULTS_PAGE
    for result in report.values():  # the certificate is never beaten inside its radius
        assert all(b["scores"]["certified_radius"]["successes_within_certified_radius"] == 0
                   for b in result["attacks"].values())


def test_readme_headline_results_are_their_json():
    """The README's few headline cells, formatted from the same JSON the results page quotes."""
    from tfrobust.paper import ATTACKS, EPS, PAPER_TABLE1

    readme = (REPO / "README.md").read_text()
    hour = json.loads((REPO / "training" / "results" / "one_cpu_hour" / "eval.json").read_text())
    assert (f"{hour['clean_accuracy']:.1%} clean, {hour['worst_case']['0.3']:.1%} under the standard AutoAttack "
            f"at eps 0.3 (first {hour['n']:,} test images) | {hour['train_seconds']:,.0f} s on 2 CPU cores") in readme
    ibp = json.loads((REPO / "training" / "results" / "certified" / "table.json").read_text())["mnist_ibp"]
    assert (f"{100 * ibp['clean']:.2f}% clean, {100 * ibp['verified']['0.3']:.2f}% verified at eps 0.3 "
            f"(all {ibp['n_verified']:,} test images)") in readme
    curvature = json.loads((REPO / "training" / "results" / "table1.json").read_text())["models"][
        "decision_jacobian_curvature"]
    paper = PAPER_TABLE1["decision_jacobian"]
    cells = sum(curvature["attacks"][a][e] >= paper[a][e] for a in ATTACKS for e in EPS)
    assert f"{100 * curvature['clean_accuracy']:.2f}% clean, {cells} of Table 1's 9 cells at or above" in readme
    smooth = json.loads((REPO / "training" / "results" / "smoothing" / "table.json").read_text())["mnist_smooth_050"]
    certified = smooth["test"]["certified_accuracy"]
    assert (f"{certified['0.75']:.1%} certified at L2 radius 0.75, {certified['1']:.1%} at 1.0 (CERTIFY, "
            f"n = {smooth['n']:,}, first {smooth['test']['examples']:,} test images)") in readme
    art = load("autoattack_vs_art.json")
    assert (f"{art['tfrobust']['robust_accuracy']:.1%} robust accuracy for both, ours {art['speedup']:.2f}x faster "
            f"| {art['n']} images") in readme and art["art"]["robust_accuracy"] == art["tfrobust"]["robust_accuracy"]
    speed = load("attack_speed.json")["ratios"]
    assert (f"0.{round(speed['tfrobust_over_limit'] * 1000):03d} of the physical limit, "
            f"{speed['tfrobust_over_art']:.1f}x ART's speed") in readme
