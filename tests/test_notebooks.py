"""Runs every notebook in ``notebooks/`` top to bottom (nbclient), so that they cannot rot.

Each notebook trains its own small models; together they take about 70 s on
two idle CPU cores (under the ~3 minutes above which this test would be
marked ``slow``). The kernel is this interpreter (``sys.executable``),
whatever kernelspecs are installed. Needs nbclient, nbformat and ipykernel.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "tfrobust-test"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec running this interpreter, found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfrobust test kernel", "language": "python"}))
    return root


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "decision_surfaces.ipynb",
                                           "indicator_and_spectra.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, kernel_dir, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(kernel_dir), os.environ.get("JUPYTER_PATH", "")]))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum(any(k.startswith("image/") for k in o.get("data", {})) for c in book.cells
                 if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= 1 or path.stem == "quickstart"
    print(f"{path.name}: {seconds:.0f} s, {images} figures")
