"""The training loop: set-up, steps, evaluation, checkpoints, resume, export.

One epoch = the rank's share of the training set in batches. Checkpoints are taken at step
boundaries (every N steps / T seconds, after every epoch, and when SIGTERM arrives) and hold
the position inside the epoch, so a resumed run continues with the very next batch.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from argparse import Namespace
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from byoc import artifact
from byoc.checkpoint import (INTERRUPTED_EXIT_CODE, Checkpointer, TerminationFlag, capture_rng_state,
                             capture_state, restore_rng_state, restore_state)

from . import data, distributed, gpu_pipeline, mixing, models, optim, parquet, readers
from .config import Paths, UsageError, resolve_lr, resolve_weight_decay
from .losses import MultiHeadLoss, correct_count, hard_targets
from .metrics import MetricsWriter, class_counts, format_line, macro_recall, metric_name, weighted_recall

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


def use_sync_bn(model: nn.Module, wanted: bool, ctx: distributed.Dist) -> tuple[nn.Module, str]:
    """SyncBatchNorm under DDP on GPUs; torch's SyncBatchNorm has no CPU kernel, so with gloo
    the model keeps per-rank BatchNorm (said in the log rather than crashing the first step)."""
    if not wanted:
        return model, "off"
    if not ctx.enabled:
        return model, "off (single process)"
    if ctx.device.type != "cuda":
        return model, "off (SyncBatchNorm needs GPUs; per-rank BatchNorm on CPU)"
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "on"


# ----------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, args: Namespace, ctx: distributed.Dist, paths: Paths):
        self.args, self.ctx, self.paths = args, ctx, paths
        self.device = ctx.device
        configure_determinism(args.deterministic, self.device)
        seed_everything(args.seed + ctx.rank)
        self.amp_dtype = choose_amp(args.amp, self.device)
        self.channels_last = self.device.type == "cuda" if args.channels_last is None else args.channels_last

        parquet_options = parquet.ParquetOptions(
            label_columns=tuple(args.label_columns), image_column=args.image_column, id_column=args.id_column,
            pixel_shape=args.pixel_shape, labels_csv=args.labels_csv)
        self.bundle = readers.load_data(paths.channel, args.train_channel, args.val_channel, args.data_format,
                                     args.val_fraction, args.seed, parquet_options)
        if len(args.label_columns) > 1 and not self.bundle.heads:
            raise UsageError(f"--label-columns {','.join(args.label_columns)} (multi-head) needs parquet data; "
                             f"the train channel is {self.bundle.format}")
        try:
            library = artifact.resolve_arch(args.arch, args.library)
        except (ValueError, ImportError) as e:
            raise UsageError(str(e)) from None
        heads = None
        if self.bundle.heads:
            heads = [{"name": name, "classes": classes, "weight": w}
                     for (name, classes), w in zip(self.bundle.heads, args.head_weights)]
        self.spec = artifact.model_spec(arch=args.arch, library=library,
                                        classes=None if heads else self.bundle.classes,
                                        image_size=args.image_size, mean=args.mean, std=args.std,
                                        eval_crop_ratio=args.eval_crop_ratio, heads=heads)
        self.head_sizes = artifact.head_sizes(self.spec)
        self.multihead = heads is not None
        self._build_data()
        self._build_model()

        self.lr = resolve_lr(args, ctx.world_size)
        wd = resolve_weight_decay(args)
        self.optimizer, self.optimizer_impl = optim.make_optimizer(self.model, args.optimizer, self.lr, wd,
                                                                   args.momentum, self.device)
        self.steps_per_epoch = self.train_batches.batches_per_epoch()
        self.total_steps = self.steps_per_epoch * args.epochs
        self.scheduler = optim.make_scheduler(self.optimizer, args.lr_schedule, self.lr, self.total_steps,
                                        int(round(args.warmup_epochs * self.steps_per_epoch)))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if self.multihead:
            self.criterion = MultiHeadLoss(self.head_sizes, args.head_weights, args.label_smoothing)
        else:  # takes class indices or, after CutMix/MixUp, probabilities
            self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.mixer = (mixing.BatchMixer(self.head_sizes, args.cutmix_alpha, args.mixup_alpha)
                      if mixing.BatchMixer.wanted(args.cutmix_alpha, args.mixup_alpha) else None)
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
        # issue 10: the GPU data pipeline (gpu_pipeline.py) yields batches already on the device
        self.pipeline, self.pipeline_why = gpu_pipeline.choose(a.data_pipeline, self.device, self.bundle.train)
        if self.pipeline == "gpu":
            self.train_loader = gpu_pipeline.device_loader(self.bundle.train, self.train_batches, workers, a,
                                                           self.device, ctx.is_main)
        else:
            self.train_loader = data.make_loader(train_set, self.train_batches, workers, pin)
        self.val_loader = None
        if self.bundle.val is not None and len(self.bundle.val):
            val_set = data.TransformedDataset(self.bundle.val, artifact.eval_transform(a.image_size, a.eval_crop_ratio))
            self.val_loader = data.make_loader(val_set, data.ShardBatches(len(val_set), a.batch_size, ctx.rank,
                                                                          ctx.world_size), workers, pin)
        self.workers = workers

    def _build_model(self) -> None:
        a = self.args
        model = artifact.build_model(self.spec)
        self.pretrained_report = None
        if a.pretrained:
            try:
                path = models.find_weights_file(self.paths.channel("pretrained"), a.pretrained_file)
                self.pretrained_report = models.load_pretrained(model, models.read_state_dict(path))
            except (FileNotFoundError, ValueError) as e:
                raise UsageError(str(e)) from None
            self.pretrained_report["file"] = path.name
        model, self.sync_bn = use_sync_bn(model, a.sync_bn, self.ctx)
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
        return {"arch": a.arch, "library": self.spec["library"],
                "num_classes": self.head_sizes if self.multihead else self.spec["num_classes"],
                "image_size": a.image_size, "batch_size": a.batch_size, "world_size": self.ctx.world_size,
                "optimizer": a.optimizer, "lr_schedule": a.lr_schedule, "epochs": a.epochs,
                # the augmentation state: order and crops are a function of (seed, epoch, step)
                "seed": a.seed, "data_pipeline": self.pipeline}

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
        if "seed" in saved and saved["seed"] != now["seed"]:  # checkpoints before issue 10 lack it
            changed["seed"] = (saved["seed"], now["seed"])
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
        target = y
        if self.mixer is not None:
            x, target = self.mixer(x, y)
            y = hard_targets(target)  # train_acc counts against the dominant label
        with self._autocast():
            logits = self.net(x)
            loss = self.criterion(logits, target)
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
        n = y.shape[0]
        self.meters += torch.stack([loss.detach().double() * n, correct_count(logits, y, self.head_sizes).double(),
                                    torch.tensor(float(n), dtype=torch.float64, device=self.device)])

    @torch.inference_mode()
    def evaluate(self) -> dict:
        """val_loss, val_acc and, multi-head, per-head accuracy and macro recall plus the
        weighted recall; {} without validation data."""
        if self.val_loader is None:
            return {}
        self.net.eval()
        weights = self.args.head_weights if self.multihead else [1.0]
        loss_sum = correct = count = 0.0
        counts = [torch.zeros(3, n, dtype=torch.float64, device=self.device) for n in self.head_sizes]
        for images, targets in self.val_loader:
            x, y = self._inputs(images), targets.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.net(x)
            ys = [y[:, h] for h in range(y.shape[1])] if y.ndim == 2 else [y]
            parts = torch.split(logits.float(), self.head_sizes, dim=1)
            loss_sum += float(sum(w * nn.functional.cross_entropy(p, t, reduction="sum")
                                  for w, p, t in zip(weights, parts, ys))) / sum(weights)
            correct += float(correct_count(logits, y, self.head_sizes))
            count += y.shape[0]
            for c, p, t in zip(counts, parts, ys):
                c += class_counts(p.argmax(1), t, c.shape[1])
        self.net.train()
        flat = distributed.sum_all(self.ctx, [loss_sum, correct, count] + torch.cat([c.flatten() for c in counts]).tolist())
        loss_sum, correct, count = flat[:3]
        values = {"val_loss": loss_sum / max(count, 1), "val_acc": correct / max(count, 1)}
        if self.multihead:
            offset, recalls = 3, []
            for (name, _), n in zip(self.bundle.heads, self.head_sizes):
                c = torch.tensor(flat[offset:offset + 3 * n], dtype=torch.float64).view(3, n)
                offset += 3 * n
                recalls.append(macro_recall(c))
                values[f"val_acc_{metric_name(name)}"] = float(c[2].sum() / c[0].sum().clamp(min=1))
                values[f"val_recall_{metric_name(name)}"] = recalls[-1]
            values["val_weighted_recall"] = weighted_recall(recalls, weights)
        return values

    # -- the loop

    def log_setup(self) -> None:
        a, b = self.args, self.bundle
        classes = (", ".join(f"{name} {len(c)} (weight {w:g})" for (name, c), w in zip(b.heads, a.head_weights))
                   if b.heads else str(len(b.classes)))
        log.info("data: %s; classes: %s; %d train / %s val images; %d workers per rank",
                 "; ".join(b.notes), classes, len(b.train), len(b.val) if b.val is not None else 0,
                 self.workers)
        log.info("data pipeline: %s (%s)%s", self.pipeline, self.pipeline_why,
                 "; nvjpeg decode, crop and flip on the device one batch ahead, on a side stream"
                 if self.pipeline == "gpu" else "; decode and augmentation in the DataLoader workers")
        log.info("model: %s/%s input %s; device %s; world size %d; amp %s; channels_last %s; compile %s",
                 self.spec["library"], a.arch, self.spec["input_size"], self.device, self.ctx.world_size,
                 self.amp_dtype or "off", self.channels_last, a.compile)
        log.info("optimizer: %s; lr=%g schedule=%s; %d steps/epoch x %d epochs; deterministic %s",
                 self.optimizer_impl, self.lr, a.lr_schedule, self.steps_per_epoch, a.epochs, a.deterministic)
        log.info("regularisation: label smoothing %g; cutmix alpha %g; mixup alpha %g; sync-bn %s; loss %s",
                 a.label_smoothing, a.cutmix_alpha, a.mixup_alpha, self.sync_bn,
                 "weighted mean of per-head cross-entropy" if self.multihead else "cross-entropy")
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
            bar = progress_bar(self.ctx.is_main, self.steps_per_epoch - self.step_in_epoch, self.epoch + 1)
            for images, targets in self.train_loader:
                self.train_step(images, targets)
                self.step_in_epoch += 1
                self.global_step += 1
                images_done += targets.numel()
                if bar is not None:
                    bar.update()
                elif a.log_interval and self.global_step % a.log_interval == 0 and self.ctx.is_main:
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
            if bar is not None:
                bar.close()
            self.end_epoch(images_done, train_seconds)
            if stop.requested:  # arrived during evaluation: the epoch checkpoint is already written
                log.warning("stopped by signal after epoch=%d; rerun to resume from the epoch checkpoint",
                            self.epoch)
                return INTERRUPTED_EXIT_CODE
        self.finish()
        return 0

    def end_epoch(self, images_done: int, train_seconds: float) -> None:
        m = distributed.sum_all(self.ctx, self.meters.tolist() + [float(images_done)])
        values = {
            "train_loss": m[0] / max(m[2], 1), "train_acc": m[1] / max(m[2], 1),
            **self.evaluate(),
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
            files = artifact.write(self.model, self.spec, self.paths.model)
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


def progress_bar(is_main: bool, steps: int, epoch: int):
    """A tqdm bar on rank 0 when stderr is a terminal (`docker run -it`), else None: in
    SageMaker and CloudWatch logs a bar is thousands of carriage returns, so there the
    `progress` log lines (--log-interval) stand in for it."""
    if not (is_main and sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with timm's dependencies; without it, log lines
        return None
    return tqdm(total=steps, desc=f"epoch {epoch}", unit="step", leave=False, dynamic_ncols=True)

