"""pytorch-byoc training toolkit: the `train` executable and the built-in trainer.

`python -m train` (console script `train`) runs a SageMaker training job;
`train.classify` is the built-in image classifier. Importing this package has
no side effects.
"""
