"""A run directory's two logs, written and read here only: ``metrics.jsonl`` and ``eval.jsonl``.

Both are JSON Lines, appended one record at a time so that a crash costs at most the line being written.

* ``metrics.jsonl`` (written by training): one record per ``--logging-steps`` window (``step``, ``loss``, ``lr``,
  ``grad_norm``, ``images_per_sec``, ``train_sec``, ``skipped_steps``) and, with ``--fid-every``, one with the
  metrics of :data:`FID_METRICS` at that step.
* ``eval.jsonl`` (written by ``ddpm eval`` and by training's ``--fid-every``): one :func:`eval_record` per
  evaluation, so FIDs from training and from later evaluations of the same run sit in one file with one layout.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ddpm.errors import DataError

METRICS_LOG = "metrics.jsonl"
EVAL_LOG = "eval.jsonl"
FID_METRICS = ("fid", "kid", "kid_std", "precision", "recall")  # what an evaluation scores


def _append(path: Path, record: dict[str, Any]) -> Path:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Append one record (it has a ``step``) to the run's ``metrics.jsonl``."""
    return _append(Path(run_dir) / METRICS_LOG, record)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``path`` is the file or its run directory), one per logged step.

    Lines of the same step are merged (``--fid-every`` writes its metrics on a line of their own). A resumed run
    may log a step twice (when it resumed from a checkpoint older than its last log line); the later values win,
    so the curve is the one the final weights followed. A line cut short by a crash is skipped.
    """
    path = Path(path)
    file = path / METRICS_LOG if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no {METRICS_LOG} at {path}; pass a run directory of `ddpm train` (its --save-model) or "
                        f"the {METRICS_LOG} file itself")
    records: dict[int, dict] = {}
    for line in file.read_text().splitlines():
        try:
            record = json.loads(line)
            records.setdefault(int(record["step"]), {}).update(record)
        except (ValueError, KeyError, TypeError):
            continue
    if not records:
        raise DataError(f"{file} holds no metrics yet; training writes one line every --logging-steps steps")
    return [records[s] for s in sorted(records)]


def eval_record(result: dict[str, Any], *, checkpoint: str | Path, step: int, weights: str, reference: str,
                reference_images: int) -> dict[str, Any]:
    """The ``eval.jsonl`` line of one evaluation: what was scored (``checkpoint``, the file or run directory, and
    its ``step`` and ``weights``), against what (``reference`` and its number of images), the ``result`` of
    :func:`ddpm.evaluate.evaluate` and when (UTC)."""
    return {"checkpoint": str(Path(checkpoint).resolve()), "step": step, "weights": weights, **result,
            "reference": reference, "reference_images": reference_images,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def append_eval(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Append an :func:`eval_record` to the run's ``eval.jsonl``; returns the file's path."""
    return _append(Path(run_dir) / EVAL_LOG, record)


def read_evals(path: str | Path) -> list[dict]:
    """The records of a run's ``eval.jsonl`` (``path`` is the file or the folder holding it), oldest first; a line
    cut short by a crash is skipped."""
    path = Path(path)
    file = path / EVAL_LOG if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no {EVAL_LOG} at {path}; `ddpm eval` writes it into the run directory")
    records = []
    for line in file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
