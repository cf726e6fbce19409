"""The built-in image classifier: ``python -m train.classify --help``.

Modules, one job each: ``config`` (hyperparameters, /opt/ml paths), ``data`` (channels ->
batches), ``models`` (pretrained weights), ``engine`` (the loop, checkpoints, resume),
``metrics`` (epoch line, TensorBoard, curves), ``distributed`` (DDP from the torchrun
environment). The model artifact (model.json, the network, the evaluation transform) is
``byoc.artifact``, shared with serving. Importing has no side effects.
"""
