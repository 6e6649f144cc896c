"""docs/tutorial.ipynb, where the reader writes DDPM in plain PyTorch: it runs from top to bottom in a fresh kernel
(a few training steps, so it takes about two minutes), its from-scratch cells agree with the package (their
``assert_close`` calls raise otherwise), and the committed copy shows its figures without being run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # where CI keeps the data, beside the clone
# What each checked cell prints once its assert_close has passed.
CHECKS = ["the same as the package", "largest difference from GaussianDiffusion.q_sample",
          "GaussianDiffusion.loss =", "largest difference from ddpm_sample", "largest difference from ddim_sample"]


def _outputs(notebook: dict) -> list[dict]:
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]


def _text(outputs: list[dict]) -> str:
    return "".join("".join(o.get("text", "")) for o in outputs)


def test_committed_notebook_shows_its_figures():
    """Read online (GitHub, nbviewer) the notebook shows what a run shows, and stays small: PNGs only, no errors."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    outputs = _outputs(notebook)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 8
    assert not [o for o in outputs if o["output_type"] == "error" or "image/jpeg" in o.get("data", {})]
    assert all(c.get("execution_count") for c in notebook["cells"] if c["cell_type"] == "code")
    assert NOTEBOOK.stat().st_size < 700_000
    text = _text(outputs)
    assert all(check in text for check in CHECKS) and "SYNTHETIC SHAPES" not in text


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / "tutorial"
    monkeypatch.setenv("DDPM_TUTORIAL_DIR", str(work))
    monkeypatch.setenv("DDPM_TUTORIAL_QUICK", "1")  # 20 steps on 64 images, 16 held-out images
    monkeypatch.delenv("DDPM_TUTORIAL_DATA", raising=False)  # only the data found relative to the repository
    # One intra-op thread in the kernel: the tiny network gains nothing from two, and on a machine whose cores are
    # busy with other work, two spinning OpenMP threads made the old tutorial's test 15x slower (measured).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell (or assert) fails

    assert (work / "tiny-ema.pt").stat().st_size > 0
    outputs = _outputs(notebook)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 8
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = _text(outputs)
    assert all(check in text for check in CHECKS)
    found = (ROOT / "cifar10-jpeg").is_dir() or ARCHIVE.is_file()
    assert ("CIFAR-10 from" in text) == found and ("NO CIFAR-10 FOUND" in text) == (not found)
