"""Errors that end a training job with a short, user-facing reason."""


class ContractError(Exception):
    """The training contract (files, variables, hyperparameters) is not usable.

    The message is written as-is to /opt/ml/output/failure, so it must be a
    short reason a user can act on, never a traceback.
    """
