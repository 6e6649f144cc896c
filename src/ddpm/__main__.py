"""``python -m ddpm`` (also what ``torchrun -m ddpm train ...`` runs)."""

import sys

from ddpm.cli import main

sys.exit(main())
