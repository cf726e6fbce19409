"""The built-in image classifier: ``python -m train.classify --help``.

Modules, one job each: ``config`` (hyperparameters, /opt/ml paths), ``data`` (channels ->
batches), ``models`` (``build_model(spec)``, shared with serving), ``engine`` (the loop,
checkpoints, resume), ``metrics`` (epoch line, TensorBoard, curves), ``export`` (model
artifact), ``distributed`` (DDP from the torchrun environment). Importing has no side effects.
"""
