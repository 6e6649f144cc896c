"""Fill in, run and re-blank docs/tutorial.ipynb, whose exercise cells raise NotImplementedError.

An exercise cell carries ``"exercise": NAME`` in its metadata; docs/tutorial_solutions.py holds one block per NAME,
from a line ``# %% exercise: NAME`` to the next such line. The committed notebook shows the outputs of a solved run
(its figures and check lines) under the blank exercises:

    python docs/make_tutorial.py               # fill in, run (4 minutes on 2 CPU cores), blank again, write
    python docs/make_tutorial.py --solved OUT  # only write a copy with the solutions filled in, not run

tests/test_tutorial.py uses :func:`fill` to run the solved notebook and checks that the committed one is blank.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
NOTEBOOK = DOCS / "tutorial.ipynb"
SOLUTIONS = DOCS / "tutorial_solutions.py"
HEADER = re.compile(r"^# %% exercise: (\S+)[ \t]*$", re.M)


def solutions(path: Path = SOLUTIONS) -> dict[str, str]:
    """NAME -> the code of its block, stripped of surrounding blank lines."""
    text = path.read_text(encoding="utf-8")
    heads = list(HEADER.finditer(text))
    blocks = {}
    for head, following in zip(heads, heads[1:] + [None]):
        if head[1] in blocks:
            raise ValueError(f"{path}: exercise {head[1]!r} has two blocks")
        blocks[head[1]] = text[head.end():following.start() if following else len(text)].strip("\n")
    return blocks


def exercise_cells(notebook: dict) -> dict[str, dict]:
    """NAME -> the exercise cell of that name, in notebook order (of a notebook read by nbformat or as JSON)."""
    cells = {}
    for cell in notebook["cells"]:
        name = cell.get("metadata", {}).get("exercise")
        if name is not None:
            if cell["cell_type"] != "code" or name in cells:
                raise ValueError(f"exercise {name!r}: one code cell per exercise")
            cells[name] = cell
    return cells


def fill(notebook: dict, blocks: dict[str, str] | None = None) -> dict:
    """The notebook (changed in place, and returned) with each exercise cell's source replaced by its solution."""
    blocks = solutions() if blocks is None else blocks
    cells = exercise_cells(notebook)
    if set(cells) != set(blocks):
        raise ValueError(f"exercises without a solution: {sorted(set(cells) - set(blocks))}; solutions without an "
                         f"exercise: {sorted(set(blocks) - set(cells))}")
    for name, cell in cells.items():
        cell["source"] = blocks[name]
    return notebook


def blank(solved: dict, original: dict) -> dict:
    """``solved`` (changed in place, and returned) with the exercise cells' sources of ``original`` put back: the
    outputs and execution counts of the solved run stay."""
    sources = {name: cell["source"] for name, cell in exercise_cells(original).items()}
    cells = exercise_cells(solved)
    if set(cells) != set(sources):
        raise ValueError("the solved and the original notebook have different exercises")
    for name, cell in cells.items():
        cell["source"] = sources[name]
    return solved


def run(notebook, timeout: int | None = None, env: dict[str, str] | None = None):
    """Execute ``notebook`` in place in a fresh kernel started in docs/, raising CellExecutionError at the first
    failing cell; ``env`` is added to the kernel's environment."""
    import nbclient

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                         resources={"metadata": {"path": str(DOCS)}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solved", type=Path, metavar="OUT",
                        help="write the notebook with the solutions filled in to OUT, without running it, and stop")
    args = parser.parse_args(argv)
    import nbformat

    original = nbformat.read(NOTEBOOK, as_version=4)
    solved = fill(nbformat.read(NOTEBOOK, as_version=4))
    if args.solved:
        for cell in solved.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(solved, args.solved)
        print(f"wrote {args.solved}, the notebook with {len(exercise_cells(solved))} solutions filled in")
        return 0
    start = time.time()
    # One intra-op thread, as the test runs it: the small networks gain little from more, and on busy cores spinning
    # OpenMP threads cost far more than they give.
    run(solved, env={"OMP_NUM_THREADS": "1"})
    nbformat.write(blank(solved, original), NOTEBOOK)
    print(f"ran {NOTEBOOK.name} with the solutions in {time.time() - start:.0f} s and wrote it back, exercises blank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
