"""docs/tutorial.ipynb, where the reader writes DDPM in plain PyTorch.

Its exercise cells (metadata ``"exercise": NAME``) raise NotImplementedError; docs/tutorial_solutions.py holds their
solutions. The slow test fills them in and runs the whole notebook in a fresh kernel (part 2 shortened to 20 training
steps, about a minute on a 2-core CPU): every check cell's ``assert`` then holds against the package. The fast tests
check that the committed notebook is blank where the learner writes and still shows the figures of a solved run.

To redo the committed notebook after changing it or the solutions (a full run, 4 minutes on a 2-core CPU):

    python docs/make_tutorial.py

It fills in the solutions, runs the notebook, puts the blank exercise cells back and writes it, outputs included.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # where CI keeps the data, beside the clone
# What each check cell prints once its asserts have passed.
CHECKS = ["make_schedule agrees with NoiseSchedule", "q_sample agrees with GaussianDiffusion.q_sample",
          "GaussianDiffusion.loss = ", "GaussianDiffusion.loss of the trained MLP",
          "largest difference from ddpm_sample", "ddim agrees with ddim_sample", "guided agrees with guided_model"]
EXERCISES = ["schedule", "q_sample", "loss", "train", "algorithm2", "ddim", "guided"]


def _make_tutorial():
    spec = importlib.util.spec_from_file_location("make_tutorial", ROOT / "docs" / "make_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _outputs(notebook: dict) -> list[dict]:
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]


def _text(outputs: list[dict]) -> str:
    return "".join("".join(o.get("text", "")) for o in outputs)


def test_committed_notebook_shows_its_figures():
    """Read online (GitHub, nbviewer) the notebook shows what a solved run shows, and stays small: PNGs only, no
    errors."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    outputs = _outputs(notebook)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 12
    assert not [o for o in outputs if o["output_type"] == "error" or "image/jpeg" in o.get("data", {})]
    assert all(c.get("execution_count") for c in notebook["cells"] if c["cell_type"] == "code")
    assert NOTEBOOK.stat().st_size < 900_000
    text = _text(outputs)
    assert all(check in text for check in CHECKS) and "SYNTHETIC SHAPES" not in text


def test_the_learner_writes_the_exercises():
    """At least six exercise cells, each a function whose body raises NotImplementedError; each has a solution, which
    the committed notebook does not contain."""
    make_tutorial = _make_tutorial()
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = make_tutorial.exercise_cells(notebook)
    assert list(cells) == EXERCISES
    blocks = make_tutorial.solutions()
    assert list(blocks) == EXERCISES
    for name, cell in cells.items():
        blank, solution = _source(cell), blocks[name]
        assert "raise NotImplementedError" in blank and "NotImplementedError" not in solution, name
        assert not cell["outputs"], name
        # The blank keeps the solution's signature and docstring, and none of the statements of its body.
        (function,) = ast.parse(solution).body
        lines = solution.splitlines()
        body = [line.strip() for statement in function.body[1:]
                for line in lines[statement.lineno - 1:statement.end_lineno]]
        assert ast.get_docstring(function) == ast.get_docstring(ast.parse(blank).body[0]), name
        blank_lines = {line.strip() for line in blank.splitlines()}
        assert lines[function.lineno - 1] in blank and not set(body) & blank_lines, name
    solved = make_tutorial.fill(json.loads(NOTEBOOK.read_text(encoding="utf-8")))
    assert [_source(c) for c in make_tutorial.exercise_cells(solved).values()] == [blocks[n] for n in EXERCISES]
    assert make_tutorial.blank(solved, notebook) == notebook


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    make_tutorial = _make_tutorial()
    work = tmp_path / "tutorial"
    monkeypatch.setenv("DDPM_TUTORIAL_DIR", str(work))
    monkeypatch.setenv("DDPM_TUTORIAL_QUICK", "1")  # part 2: 20 steps on 64 images, 16 held-out images
    monkeypatch.delenv("DDPM_TUTORIAL_DATA", raising=False)  # only the data found relative to the repository
    # One intra-op thread in the kernel: the small networks gain nothing from two, and on a machine whose cores are
    # busy with other work, two spinning OpenMP threads made an older version of this test 15x slower (measured).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = make_tutorial.fill(nbformat.read(NOTEBOOK, as_version=4))
    # Raises CellExecutionError, with the cell and its traceback, if any cell (or check) fails.
    make_tutorial.run(notebook, timeout=300)

    assert (work / "tiny.pt").stat().st_size > 0
    outputs = _outputs(notebook)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 12
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = _text(outputs)
    assert all(check in text for check in CHECKS)
    found = (ROOT / "cifar10-jpeg").is_dir() or ARCHIVE.is_file()
    assert ("CIFAR-10 from" in text) == found and ("NO CIFAR-10 FOUND" in text) == (not found)
