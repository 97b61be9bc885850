"""The README's code example runs as written and does what its comments say."""

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]


def readme_python_blocks() -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```$", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_readme_example_trains_evaluates_and_exports(tmp_path, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) == 1, "the README has one example; this test executes it"
    monkeypatch.chdir(tmp_path)  # the example exports into a relative folder
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used

    report, model = namespace["report"], namespace["model"]
    assert report["n"] == 200 and report["sanity"]["passed"]
    assert report["clean_accuracy"] > 0.5  # ten classes: well above chance after three epochs
    # The worst case is over both attacks: never above either, and it falls with eps.
    for eps, worst in report["worst_case"].items():
        assert worst <= min(report["attacks"][a][eps] for a in ("fgsm", "pgd")) <= report["clean_accuracy"]
    assert report["worst_case"]["0.1"] <= report["worst_case"]["0.05"]
    history = model.history.history
    assert {"loss", "ce", "jacobian_penalty", "accuracy"} <= set(history)  # the metrics its comment names
    assert history["loss"][-1] < history["loss"][0] and min(history["jacobian_penalty"]) > 0
    assert "sanity: passed" in capsys.readouterr().out

    served = tf.saved_model.load(str(tmp_path / "models" / "digits" / "1"))  # the version folder it names
    x = namespace["x"][:4]
    logits = served.signatures["serving_default"](inputs=tf.constant(x))["logits"]
    np.testing.assert_allclose(logits.numpy(), model(x, training=False).numpy(), atol=1e-5)
