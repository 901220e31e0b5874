"""Expected errors: the CLI prints their message once and exits non-zero, without a traceback."""


class ProdaError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class ConfigError(ProdaError):
    """A configuration key or value is unknown, mistyped or impossible."""


class DataError(ProdaError):
    """A dataset file or folder is missing, unreadable or holds unexpected values."""


class CheckpointError(ProdaError):
    """A checkpoint is unreadable, torn, or does not fit the model."""


class StalePseudoLabelsError(DataError):
    """A pseudo-label folder already holds labels of another checkpoint or stage than the one asked for."""
