"""A DDP probe: every rank adds rank + 1 over gloo; rank 0 writes the sum to the model dir.
FAIL_RANK=N makes rank N fail (tests/container/test_two_hosts.py, tests/local_mode/*_sdk3.py)."""
import os, socket, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if os.environ.get("FAIL_RANK") == str(rank):
    raise RuntimeError(f"rank {rank} cannot go on: bad shard")
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
print(f"rank {rank} of {world} on {socket.gethostname()} sum {int(total.item())}", flush=True)
if rank == 0:
    open(os.path.join(os.environ["SM_MODEL_DIR"], "result.txt"), "w").write(str(int(total.item())))
dist.destroy_process_group()
