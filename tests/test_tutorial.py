"""docs/tutorial.ipynb runs from top to bottom in a fresh kernel (a few training steps, so it takes about a minute)
and writes every figure it shows, with the CIFAR-10 JPEG archive when it is at hand and with synthetic shapes
without it."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIGURES = ["forward.png", "architecture.png", "samples.png", "trajectory.png", "trajectory.gif", "loss_vs_t.png",
           "shipped-samples.png", "shipped-trajectory.png"]


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    work = tmp_path / "tutorial"
    monkeypatch.setenv("DDPM_TUTORIAL_DIR", str(work))
    monkeypatch.setenv("DDPM_TUTORIAL_QUICK", "1")  # 20 steps on 48 images, 8 samples, 32 held-out images
    monkeypatch.setenv("DDPM_TUTORIAL_ARCHIVE", "")  # only the archive next to the repository, if any
    # One intra-op thread in the kernel: the tiny network gains nothing from two, and on a machine whose cores are
    # busy with other work, two spinning OpenMP threads made this test 15x slower (50 s -> 14 min, measured).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(DOCS)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    assert len(list((work / "images").iterdir())) == 48 and len(list((work / "heldout").iterdir())) == 32
    for name in FIGURES:
        assert (work / "figures" / name).stat().st_size > 0, name
    assert (work / "run" / "training_curves.png").is_file()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 9
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "largest difference" in text and "$ ddpm train --preset tiny" in text
