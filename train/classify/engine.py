"""The training loop: set-up, steps, evaluation, checkpoints, resume, export.

One epoch = the rank's share of the training set in batches. Checkpoints are taken at step
boundaries (every N steps / T seconds, after every epoch, and when SIGTERM arrives) and hold
the position inside the epoch, so a resumed run continues with the very next batch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from argparse import Namespace
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from byoc.checkpoint import (INTERRUPTED_EXIT_CODE, Checkpointer, TerminationFlag, capture_rng_state,
                             capture_state, restore_rng_state, restore_state)

from . import data, distributed, export, models
from .config import Paths, UsageError
from .metrics import MetricsWriter, format_line

log = logging.getLogger(__name__)

# hyperparameters that must match for a checkpoint to be resumed
RESUME_KEYS = ("arch", "library", "num_classes", "image_size", "batch_size", "world_size", "optimizer",
               "lr_schedule", "epochs")


# ----------------------------------------------------------------------------- set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def choose_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a GPU (use bf16 or none on CPU)")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-d tensors), as in torchvision's recipes."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    """torch's fused kernel when it takes these parameters, else foreach; returns (opt, which)."""
    groups = param_groups(model, weight_decay)
    cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    extra = {"momentum": momentum, "nesterov": momentum > 0} if name == "sgd" else {}
    for impl in ("fused", "foreach"):
        try:
            return cls(groups, lr=lr, **extra, **{impl: True}), f"{cls.__name__}({impl})"
        except (RuntimeError, ValueError, TypeError):
            continue
    return cls(groups, lr=lr, **extra), f"{cls.__name__}(for-loop)"


class WarmupSchedule:
    """LR factor per step: linear warm-up, then cosine to 0 or constant. Plain attributes, so
    LambdaLR's state_dict stays loadable with weights_only=True."""

    def __init__(self, total_steps: int, warmup_steps: int, cosine: bool):
        self.total_steps, self.warmup_steps, self.cosine = total_steps, warmup_steps, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, schedule: str, lr: float, total_steps: int, warmup_steps: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupSchedule(total_steps, warmup_steps, cosine=schedule == "cosine"))


# ----------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, args: Namespace, ctx: distributed.Dist, paths: Paths):
        self.args, self.ctx, self.paths = args, ctx, paths
        self.device = ctx.device
        configure_determinism(args.deterministic, self.device)
        seed_everything(args.seed + ctx.rank)
        self.amp_dtype = choose_amp(args.amp, self.device)
        self.channels_last = self.device.type == "cuda" if args.channels_last is None else args.channels_last

        self.bundle = data.load_data(paths.channel, args.train_channel, args.val_channel, args.data_format,
                                     args.val_fraction, args.seed)
        try:
            library = models.resolve_arch(args.arch, args.library)
        except (ValueError, ImportError) as e:
            raise UsageError(str(e)) from None
        self.spec = export.model_spec(arch=args.arch, library=library, classes=self.bundle.classes,
                                      image_size=args.image_size, mean=args.mean, std=args.std,
                                      eval_crop_ratio=args.eval_crop_ratio)
        self._build_data()
        self._build_model()

        world_batch = args.batch_size * ctx.world_size
        self.lr = args.lr if args.lr is not None else (0.1 * world_batch / 256 if args.optimizer == "sgd" else 1e-3)
        wd = args.weight_decay if args.weight_decay is not None else (1e-4 if args.optimizer == "sgd" else 0.05)
        self.optimizer, self.optimizer_impl = make_optimizer(self.model, args.optimizer, self.lr, wd, args.momentum)
        self.steps_per_epoch = self.train_batches.batches_per_epoch()
        self.total_steps = self.steps_per_epoch * args.epochs
        self.scheduler = make_scheduler(self.optimizer, args.lr_schedule, self.lr, self.total_steps,
                                        int(round(args.warmup_epochs * self.steps_per_epoch)))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        mean = torch.tensor(args.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(args.std, device=self.device).view(1, 3, 1, 1) * 255
        self.mean, self.std = mean, std

        self.checkpointer = Checkpointer(paths.checkpoints, keep_last=args.keep_checkpoints,
                                         every_steps=args.checkpoint_every_steps,
                                         every_seconds=args.checkpoint_every_seconds, enabled=ctx.is_main)
        self.metrics = MetricsWriter(paths.output / "tensorboard", paths.output_data / "training_curves.png",
                                     enabled=ctx.is_main)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.meters = self._zero_meters()
        self.history: list[dict] = []

    # -- building

    def _build_data(self) -> None:
        a, ctx = self.args, self.ctx
        workers = a.workers if a.workers is not None else data.default_workers(ctx.local_world_size)
        pin = self.device.type == "cuda"
        train_set = data.TransformedDataset(self.bundle.train, data.train_transform(a.image_size, a.min_crop_scale, a.hflip))
        self.train_batches = data.EpochBatches(len(train_set), a.batch_size, seed=a.seed, rank=ctx.rank,
                                               world_size=ctx.world_size)
        self.train_loader = data.make_loader(train_set, self.train_batches, workers, pin)
        self.val_loader = None
        if self.bundle.val is not None and len(self.bundle.val):
            val_set = data.TransformedDataset(self.bundle.val, data.eval_transform(a.image_size, a.eval_crop_ratio))
            self.val_loader = data.make_loader(val_set, data.ShardBatches(len(val_set), a.batch_size, ctx.rank,
                                                                          ctx.world_size), workers, pin)
        self.workers = workers

    def _build_model(self) -> None:
        a = self.args
        model = models.build_model(self.spec)
        self.pretrained_report = None
        if a.pretrained:
            try:
                path = models.find_weights_file(self.paths.channel("pretrained"), a.pretrained_file)
                self.pretrained_report = models.load_pretrained(model, models.read_state_dict(path))
            except (FileNotFoundError, ValueError) as e:
                raise UsageError(str(e)) from None
            self.pretrained_report["file"] = path.name
        if a.sync_bn and self.ctx.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model = model  # the plain module; self.net is what runs (DDP/compile wrapped)

    def _wrap(self) -> None:
        net = self.model
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.args.compile:
            net = torch.compile(net)
        self.net = net

    # -- checkpoints

    def _zero_meters(self) -> torch.Tensor:
        """Running sums of this epoch on this rank: loss x images, correct, images."""
        return torch.zeros(3, dtype=torch.float64, device=self.device)

    def _run_config(self) -> dict:
        a = self.args
        return {"arch": a.arch, "library": self.spec["library"], "num_classes": self.spec["num_classes"],
                "image_size": a.image_size, "batch_size": a.batch_size, "world_size": self.ctx.world_size,
                "optimizer": a.optimizer, "lr_schedule": a.lr_schedule, "epochs": a.epochs}

    def save_checkpoint(self, reason: str) -> None:
        """All ranks call this together (RNG states are gathered); rank 0 writes."""
        rngs = distributed.gather_objects(self.ctx, capture_rng_state())
        if self.ctx.is_main:
            state = capture_state(self.model, self.optimizer, self.scheduler, self.scaler,
                                  epoch=self.epoch, step=self.step_in_epoch, global_step=self.global_step,
                                  rng=rngs[0], rng_per_rank=rngs, meters=self.meters.cpu(),
                                  history=list(self.history), config=self._run_config())
            path = self.checkpointer.save(state, self.global_step)
            log.info("checkpoint (%s), resumes at epoch=%d step=%d: %s", reason, self.epoch + 1, self.step_in_epoch, path)
        else:
            self.checkpointer.mark_saved(self.global_step)
        distributed.barrier(self.ctx)

    def resume(self) -> bool:
        state = self.checkpointer.load_latest() if self.ctx.is_main and self.args.resume else None
        state = distributed.broadcast_object(self.ctx, state)
        if state is None:
            return False
        extra = state.get("extra", {})
        saved, now = extra.get("config", {}), self._run_config()
        changed = {k: (saved.get(k), now[k]) for k in RESUME_KEYS if saved.get(k) != now[k]}
        if changed:
            raise UsageError(f"the checkpoint {state.get('path')} is from a different run {changed}; "
                             f"remove it from {self.paths.checkpoints} or pass --resume false")
        pos = restore_state(state, self.model, self.optimizer, self.scheduler, self.scaler, rng=False)
        per_rank = extra.get("rng_per_rank") or []
        if len(per_rank) == self.ctx.world_size:
            restore_rng_state(per_rank[self.ctx.rank])
        self.epoch, self.step_in_epoch, self.global_step = pos["epoch"], pos["step"], pos["global_step"]
        meters = extra.get("meters")
        self.meters = meters.to(self.device) if torch.is_tensor(meters) else self._zero_meters()
        self.history = list(extra.get("history") or [])
        self.checkpointer.mark_saved(self.global_step)
        log.info("resumed from %s at epoch=%d step=%d (global step %d)", state.get("path"), self.epoch + 1,
                 self.step_in_epoch, self.global_step)
        return True

    # -- steps

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        x, y = self._inputs(images), targets.to(self.device, non_blocking=True)
        with self._autocast():
            logits = self.net(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.args.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.args.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        # summed on the device: no host sync per step
        n = y.numel()
        self.meters += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                    torch.tensor(float(n), dtype=torch.float64, device=self.device)])

    @torch.inference_mode()
    def evaluate(self) -> tuple[float | None, float | None]:
        if self.val_loader is None:
            return None, None
        self.net.eval()
        loss_sum = correct = count = 0.0
        for images, targets in self.val_loader:
            x, y = self._inputs(images), targets.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.net(x)
            loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            count += y.numel()
        self.net.train()
        loss_sum, correct, count = distributed.sum_all(self.ctx, [loss_sum, correct, count])
        return loss_sum / max(count, 1), correct / max(count, 1)

    # -- the loop

    def log_setup(self) -> None:
        a, b = self.args, self.bundle
        log.info("data: %s; %d classes; %d train / %s val images; %d workers per rank",
                 "; ".join(b.notes), len(b.classes), len(b.train), len(b.val) if b.val is not None else 0,
                 self.workers)
        log.info("model: %s/%s input %s; device %s; world size %d; amp %s; channels_last %s; compile %s",
                 self.spec["library"], a.arch, self.spec["input_size"], self.device, self.ctx.world_size,
                 self.amp_dtype or "off", self.channels_last, a.compile)
        log.info("optimizer: %s lr=%g schedule=%s; %d steps/epoch x %d epochs; deterministic %s",
                 self.optimizer_impl, self.lr, a.lr_schedule, self.steps_per_epoch, a.epochs, a.deterministic)
        if self.pretrained_report:
            r = self.pretrained_report
            log.info("pretrained: %d of %d tensors loaded from %s; re-initialised: %s; unused: %d",
                     r["loaded"], r["total"], r["file"], ", ".join(r["missing"][:8]) or "none",
                     len(r["unexpected"]))

    def train(self, stop: TerminationFlag) -> int:
        a = self.args
        self._wrap()
        self.net.train()
        while self.epoch < a.epochs:
            self.train_batches.set_epoch(self.epoch, self.step_in_epoch)
            started, images_done = time.perf_counter(), 0
            for images, targets in self.train_loader:
                self.train_step(images, targets)
                self.step_in_epoch += 1
                self.global_step += 1
                images_done += targets.numel()
                if a.log_interval and self.global_step % a.log_interval == 0 and self.ctx.is_main:
                    loss_sum, _, count = self.meters.tolist()
                    log.info("progress epoch=%d step=%d/%d loss=%.4f lr=%.4g", self.epoch + 1, self.step_in_epoch,
                             self.steps_per_epoch, loss_sum / max(count, 1), self.scheduler.get_last_lr()[0])
                stopping, due = distributed.any_rank(self.ctx, stop.requested, self.checkpointer.due(self.global_step))
                if stopping or (due and self.step_in_epoch < self.steps_per_epoch):
                    self.save_checkpoint("SIGTERM" if stopping else "periodic")
                if stopping:
                    log.warning("stopped by signal at epoch=%d step=%d; rerun to resume from the checkpoint",
                                self.epoch + 1, self.step_in_epoch)
                    return INTERRUPTED_EXIT_CODE
            train_seconds = time.perf_counter() - started
            self.end_epoch(images_done, train_seconds)
            if stop.requested:  # arrived during evaluation: the epoch checkpoint is already written
                return INTERRUPTED_EXIT_CODE
        self.finish()
        return 0

    def end_epoch(self, images_done: int, train_seconds: float) -> None:
        m = distributed.sum_all(self.ctx, self.meters.tolist() + [float(images_done)])
        val_loss, val_acc = self.evaluate()
        values = {
            "train_loss": m[0] / max(m[2], 1), "train_acc": m[1] / max(m[2], 1),
            "val_loss": val_loss, "val_acc": val_acc,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_sec": m[3] / max(train_seconds, 1e-9),
        }
        self.epoch += 1
        self.step_in_epoch = 0
        self.meters = self._zero_meters()
        self.history.append({"epoch": self.epoch, **values})
        if self.ctx.is_main:
            log.info(format_line(self.epoch, values))
            self.metrics.epoch(self.epoch, values, self.history)
        self.save_checkpoint("epoch")

    def finish(self) -> None:
        if self.ctx.is_main:
            files = export.export_model(self.model, self.spec, self.paths.model)
            log.info("model exported: %s", ", ".join(str(f) for f in files))
        self.metrics.close()
        distributed.barrier(self.ctx)


def run(args: Namespace) -> int:
    ctx = distributed.setup()
    try:
        trainer = Trainer(args, ctx, Paths.from_env())
        trainer.log_setup()
        trainer.resume()
        with TerminationFlag() as stop:
            return trainer.train(stop)
    finally:
        distributed.teardown()
