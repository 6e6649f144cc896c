"""Durations as people write them (``2h``, ``90m``, ``1h30m``) and as logs show them: ``--max-time`` and the
training summary."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?:in)?)?(?:(\d+(?:\.\d*)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``2h``, ``90m``, ``1h30m``, ``45s``, ``1.5h`` or a plain number of seconds."""
    text = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(f"{text!r} is not a duration; write e.g. 2h, 90m, 1h30m, 45s or a number of seconds") \
                from None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the unit that fits: ``42 s``, ``12.5 min``, ``3.02 h``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
