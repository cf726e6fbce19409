"""pytorch-byoc helpers that users' own training scripts may import.

Named ``byoc`` (not ``train``) because a user's script is usually called
``train.py``, which would shadow a ``train`` package in its own process.

    from byoc.checkpoint import Checkpointer, TerminationFlag
"""
