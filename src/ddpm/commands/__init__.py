"""Sub-commands of the ``ddpm`` CLI: each module defines ``register(subparsers)`` and ``run(args) -> int``."""
