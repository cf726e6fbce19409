"""A SageMaker-style model server on LitServe, for bench/engine_candidates.py only.

It runs the model dir's own code/inference.py (model_fn, input_fn, predict_fn, output_fn)
the way a workshop user's code runs in our image, so that both servers do the same work:

  setup            model_fn(/opt/ml/model), once per LitServe worker process
  decode_request   input_fn(body, content type) per request
  batch            torch.cat of the decoded inputs (LitServe's dynamic batching)
  predict          predict_fn ONCE on the stacked batch (not once per item)
  unbatch          the batch's rows, one per request
  encode_response  output_fn(row, accept) per request

Settings (environment):
  LS_WORKERS        LitServe workers_per_device on the CPU (default: the container's CPUs,
                    as our engine: one worker per core)
  LS_API_SERVERS    uvicorn processes in front (default 1)
  LS_BATCH          max_batch_size (default 4, our CPU default)
  LS_BATCH_TIMEOUT  batch_timeout in seconds (default 0.001, our 1 ms)
  LS_THREADS        torch threads per worker (default: the container's CPUs // workers)
  LS_TIMEOUT        LitServer timeout in seconds (default 60)
  LS_FAST_QUEUE     1: LitServe's ZeroMQ queue (fast_queue=True)

LitServe reads only JSON or form bodies from a plain Request; a raw image/jpeg body (SageMaker's
contract) needs decode_request's parameter typed as a bytes Body, and then the content type is
not seen by the worker: this server passes image/jpeg to input_fn.
"""
import importlib.util
import json
import os
import sys
from typing import Annotated

import litserve as ls
import torch
from fastapi import Body, Response

MODEL_DIR = "/opt/ml/model"
CONTENT_TYPE = "image/jpeg"
ACCEPT = "application/json"


def container_cpus() -> int:
    """The CPUs docker --cpus gives (cgroup v2 cpu.max), else the host's."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


def load_user_module():
    path = os.path.join(MODEL_DIR, "code", "inference.py")
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WorkshopAPI(ls.LitAPI):
    def setup(self, device):
        workers = int(os.environ.get("LS_WORKERS", "0")) or container_cpus()
        threads = int(os.environ.get("LS_THREADS", "0")) or max(1, container_cpus() // workers)
        torch.set_num_threads(threads)
        self.user = load_user_module()
        self.model = self.user.model_fn(MODEL_DIR)

    def decode_request(self, request: Annotated[bytes, Body(media_type=CONTENT_TYPE)]):
        return self.user.input_fn(request, CONTENT_TYPE)

    def batch(self, inputs):
        return torch.cat(inputs)

    def predict(self, x):
        return self.user.predict_fn(x, self.model)

    def unbatch(self, output):
        return [row.unsqueeze(0) for row in output]

    def encode_response(self, output) -> Response:
        body = self.user.output_fn(output, ACCEPT)
        return Response(content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                        media_type=ACCEPT)


def main():
    workers = int(os.environ.get("LS_WORKERS", "0")) or container_cpus()
    api = WorkshopAPI(max_batch_size=int(os.environ.get("LS_BATCH", "4")),
                      batch_timeout=float(os.environ.get("LS_BATCH_TIMEOUT", "0.001")),
                      api_path="/invocations")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers,
                          timeout=float(os.environ.get("LS_TIMEOUT", "60")), healthcheck_path="/ping",
                          fast_queue=os.environ.get("LS_FAST_QUEUE") == "1",
                          # bytes: 0.2.19 documents "1GB" but compares the string with the size
                          # read so far, and every request with a body gets a 400
                          max_payload_size=1024 ** 3)
    server.run(host="0.0.0.0", port=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")),
               num_api_servers=int(os.environ.get("LS_API_SERVERS", "1")), log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
