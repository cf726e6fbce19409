"""model_fn runs once per worker process, never again while requests are answered.

As AWS's test script: model_fn leaves a marker file named after its process id and raises if
the marker is already there, so a server that called model_fn again in the same process (per
request, say) answers that request with an error. AWS's writes the marker into model_dir; the
server here runs as uid 1000, which may not be allowed to write there, so it falls back to the
temp dir (one per container, shared by its workers, like model_dir).
"""
import os
import tempfile


def model_fn(model_dir):
    where = model_dir if os.access(model_dir, os.W_OK) else tempfile.gettempdir()
    marker = os.path.join(where, f"model_fn-called-in.{os.getpid()}")
    try:
        open(marker, "x").close()
    except FileExistsError:
        raise RuntimeError(f"model_fn called a second time in process {os.getpid()} ({marker})") from None
    return "model"


def input_fn(body, content_type):
    return body


def predict_fn(data, model):
    return b"output"


def output_fn(prediction, accept):
    return prediction
