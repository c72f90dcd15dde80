"""The one base class of input errors, and the exit status the `retrain` command gives them.

An input error is one that retrying cannot mend: a request file with a wrong field, a configuration
value out of range, a dataset with nothing to train on, an object key that escapes its prefix. Each
module keeps its own error class (``ConfigError``, ``ContractError``, ``TrainInputError``, …) and
inherits `InputError` besides its usual base, so callers can catch the whole family.

The `retrain` command exits with `INPUT_ERROR_EXIT` (65, ``EX_DATAERR`` of sysexits.h) on an input
error and with 1 on anything else, so a launcher can tell "the input is wrong" (fail the task now)
from a crash (retry it).
"""

from __future__ import annotations

#: Exit status of `retrain <command>` for an `InputError` (sysexits.h EX_DATAERR).
INPUT_ERROR_EXIT = 65


class InputError(Exception):
    """Bad input (request, configuration, data): retrying will not help; the message says what to fix."""
