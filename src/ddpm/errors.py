"""User-facing errors: the CLI prints their message on one line and exits with a non-zero status."""


class DDPMError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it."""

    exit_code = 2


class ConfigError(DDPMError):
    """An invalid flag, preset or configuration value."""


class DataError(DDPMError):
    """Training or evaluation data that is missing, empty or unreadable."""


class CheckpointError(DDPMError):
    """A checkpoint that is missing, corrupt or incompatible."""


class TrainingError(DDPMError):
    """Training cannot continue (e.g. repeated non-finite losses)."""


class OutputError(DDPMError):
    """An output file or folder that cannot be written (a missing folder, a file in the way, a full disk)."""


class DDPMWarning(UserWarning):
    """Something that works but is probably not what the user wants; the CLI prints it as one line."""
