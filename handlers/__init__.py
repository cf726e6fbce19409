"""Default inference handlers (model_fn/input_fn/predict_fn/output_fn) for the
models the built-in trainer exports; also importable from a user's inference.py."""
