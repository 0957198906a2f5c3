"""User-facing errors.

Every mistake a user can make (a bad config, a broken dataset, a foreign store, a concurrent
run) is raised as a :class:`SprayError`; the command line prints its one-paragraph message and
exits with its code instead of showing a traceback.

Exit codes (docs/errors.md): 0 ok, 1 flagged classes, 2 bad input, configuration or store,
3 a run the gate cannot vouch for (incomplete, failed or stale), 130 interrupted.
"""


class SprayError(Exception):
    """A problem with the user's input, configuration or store (exit code 2)."""

    exit_code = 2


class ConfigError(SprayError):
    """The run config or a pipeline preset is invalid (names the key at fault)."""


class DataError(SprayError):
    """The dataset or the relevance maps are unusable (names the sample or array at fault)."""


class ModelError(SprayError):
    """The model factory, its weights or its layers cannot be used."""


class StoreError(SprayError):
    """The output store is foreign, corrupt, locked by another run or not writable."""


class IncompleteRunError(SprayError):
    """The run did not finish, a class failed, or the summary does not match the store (exit 3).

    ``spray check`` fails closed on such runs unless ``--allow-incomplete`` is given.
    """

    exit_code = 3
