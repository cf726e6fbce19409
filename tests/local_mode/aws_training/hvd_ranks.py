"""Each Horovod rank writes what it is (rank, local rank, size) and the sum of every rank's
number, all-reduced over Horovod's CPU path, to rank-<rank>.json in the model dir."""
import json
import os

import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank())]), op=hvd.Sum).item()
seen = {"rank": hvd.rank(), "local_rank": hvd.local_rank(), "size": hvd.size(), "sum_of_ranks": total}
with open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank-{hvd.rank()}.json"), "w") as f:
    json.dump(seen, f)
print(seen, flush=True)
