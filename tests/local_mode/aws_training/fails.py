"""A training script whose data check fails: the job must fail and say why."""
raise ValueError("aws-compat: the training channel has no label column")
