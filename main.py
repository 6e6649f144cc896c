"""The original command line: ``python main.py --train ...`` or ``python main.py --sample --load-model RUN ...``.

Same flags and code path as the ``ddpm`` console script (``ddpm train``, ``ddpm sample``); see ``--help``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from ddpm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
