"""Collective operations across every host of the job, as AWS's toolkit test script checks them:
each host starts --processes-per-host ranks itself (torch.multiprocessing), they join one group
on the first host, and run broadcast, all_reduce, barrier and point-to-point send/recv (gloo on
CPU), checking every result. Writes 'success' to the model dir when every rank of this host
passed; a rank that fails makes the host exit non-zero.
"""
import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def filled(value, shape):
    return torch.full(shape, float(value))


def check_operations(rank, world, shape):
    # broadcast: every rank ends with rank 0's tensor
    t = filled(rank + 1, shape)
    dist.broadcast(t, src=0)
    assert torch.equal(t, filled(1, shape)), f"rank {rank}: broadcast gave {t}"

    # all_reduce: every rank ends with 1 + 2 + ... + world
    t = filled(rank + 1, shape)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    assert torch.equal(t, filled(world * (world + 1) // 2, shape)), f"rank {rank}: all_reduce gave {t}"

    dist.barrier()

    # send/recv: rank 0 sends its tensor to each other rank in turn
    t = filled(rank + 1, shape)
    if rank == 0:
        for other in range(1, world):
            dist.send(t, dst=other)
    else:
        dist.recv(t, src=0)
    assert torch.equal(t, filled(1, shape)), f"rank {rank}: recv gave {t}"


def run_rank(local_rank, args, host_index, hosts):
    rank = host_index * args.processes_per_host + local_rank
    world = args.processes_per_host * len(hosts)
    dist.init_process_group(args.backend, init_method=f"tcp://{hosts[0]}:{args.port}", rank=rank, world_size=world)
    check_operations(rank, world, (args.rows, args.columns))
    print(f"rank {rank} of {world}: broadcast, all_reduce, barrier, send/recv passed", flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--processes-per-host", type=int, default=int(os.environ["SM_NUM_CPUS"]))
    parser.add_argument("--port", type=int, default=55555)
    args = parser.parse_args()

    hosts = json.loads(os.environ["SM_HOSTS"])
    host_index = hosts.index(os.environ["SM_CURRENT_HOST"])
    mp.spawn(run_rank, args=(args, host_index, hosts), nprocs=args.processes_per_host)  # raises if a rank fails
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "success"), "w") as f:
        f.write("success")


if __name__ == "__main__":
    main()
