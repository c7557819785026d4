"""One error type for bad input: the CLI prints its message (one sentence) instead of a trace."""


class JointPruneError(ValueError):
    """Bad input or an unrecoverable run state, explained in one sentence."""
