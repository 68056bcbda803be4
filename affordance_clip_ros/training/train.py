"""Training the FPN on referring segmentation (paper Sec. 3.4 and 4.3); CLIP stays frozen.

One GPU (or CPU)::

    affordance-clip train --data-root data/refer --out-dir runs/fpn

Several GPUs on one node, and two nodes of 8 GPUs (run the same command on each node)::

    torchrun --standalone --nproc_per_node 4 -m affordance_clip_ros.cli train --data-root data/refer
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST --master_port 29500 \\
        -m affordance_clip_ros.cli train --data-root data/refer

Resume an interrupted run (same data order, same result)::

    affordance-clip train --resume runs/fpn

``batch_size`` is the effective batch over all processes; each process runs micro-batches of
``micro_batch_size`` and accumulates ``batch_size / (micro_batch_size x processes)`` of them per
optimizer step. The FPN's BatchNorm normalises over one forward pass: under DDP on CUDA over the
micro-batches of all processes (SyncBatchNorm), else over each process's micro-batch; with
accumulation that is fewer images than the batch (a warning says so). Only process 0 logs and
writes files; process r seeds with seed + r.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..model import AffordanceFPN, FPNConfig, FrozenCLIP, count_trainable_parameters, paired_pixel_text_logits, save_fpn
from . import distributed
from .config import RESUME_OVERRIDABLE, TrainConfig
from .data import ReferringDataset, ResumableSampler, build_dataset, worker_init
from .loss import iou_counts, per_sample_iou, pixel_text_loss
from .logs import TRAIN_COLUMNS, VAL_COLUMNS, CsvLog, save_prediction_grid
from .state import (FPN_FILE, STATE_FILE, load_trainer_state, restore_rng, save_trainer_state, trainer_state)

log = logging.getLogger(__name__)
StepCallback = Callable[[int, float], None]


# ------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch is split: micro-batches per process and accumulation steps."""

    micro_batch: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int

    @property
    def samples_per_step(self) -> int:
        """Samples one process consumes per optimizer step."""
        return self.micro_batch * self.accumulation


def plan_batches(config: TrainConfig, samples_per_process: int, world_size: int) -> BatchPlan:
    micro = config.micro_batch_size or config.batch_size // world_size
    if micro < 2:
        raise ValueError(f"each forward pass would see {micro} image(s) (batch_size {config.batch_size} over "
                         f"{world_size} process(es)); the FPN's BatchNorm needs >= 2. Raise --batch-size or set "
                         f"--micro-batch-size 2 or more.")
    if config.batch_size % (micro * world_size):
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size {micro} x "
                         f"{world_size} process(es); choose values whose product divides it")
    accumulation = config.batch_size // (micro * world_size)
    steps_per_epoch = samples_per_process // (micro * accumulation)
    if steps_per_epoch == 0:
        raise ValueError(f"{samples_per_process} training samples per process are fewer than one batch of "
                         f"{micro * accumulation}; lower --batch-size or add data")
    total = config.max_steps or config.epochs * steps_per_epoch
    return BatchPlan(micro, accumulation, steps_per_epoch, total)


def build_fpn(clip: FrozenCLIP, config: TrainConfig, device: torch.device, sync_batchnorm: bool) -> AffordanceFPN:
    """The FPN to train. ``sync_batchnorm`` (DDP on CUDA): its BatchNorm layers become SyncBatchNorm,
    with the same parameter and buffer names, so its checkpoints load into a plain FPN."""
    fpn = AffordanceFPN(FPNConfig(clip.feature_channels, clip.embed_dim, config.width, config.levels))
    if sync_batchnorm:
        fpn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(fpn)
    fpn.to(device)
    if config.channels_last:
        fpn.to(memory_format=torch.channels_last)
    return fpn


def batchnorm_images(plan: BatchPlan, ctx: distributed.DistContext) -> int:
    """Images whose statistics each BatchNorm normalisation uses: one micro-batch, of every process
    when they are synchronised."""
    return plan.micro_batch * (ctx.world_size if ctx.syncs_batchnorm else 1)


def get_lr(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: bf16 on CUDA GPUs with native bf16 (compute
    capability 8.0+, no loss scaling needed), else fp16 with loss scaling; fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        # not torch.cuda.is_bf16_supported(): it also counts the slow emulated bf16 of older GPUs
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def forward_logits(clip: FrozenCLIP, fpn: torch.nn.Module, batch: dict, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    """Frozen CLIP (no grad) -> FPN -> Eq. 6 logits (B, h, w), one sentence per image."""
    pixels = batch["pixels"].to(device, non_blocking=True)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        with torch.no_grad():
            features = clip.image_features(pixels)
        text = clip.encode_text(list(batch["text"])).clone()  # inference tensor -> autograd-safe copy
        return paired_pixel_text_logits(fpn(features), text)


def warn_of_shared_images(train_set: ReferringDataset, val_set: ReferringDataset) -> int:
    """Warn when validation images are also training images, and return how many: RefCOCO,
    RefCOCO+ and RefCOCOg split COCO train2014 each in their own way, so RefCOCOg's train split
    holds images of RefCOCO's val split, and the validation IoU comes out optimistic."""
    train_images = {os.path.basename(record.image) for record in train_set.records}
    shared = {os.path.basename(record.image) for record in val_set.records} & train_images
    if shared:
        log.warning("%d of the %d validation images are also training images (the refer datasets split COCO "
                    "independently): read the validation IoU as a training monitor, not a held-out score; "
                    "AGD20K (affordance-clip evaluate) is the held-out test.", len(shared),
                    len({record.image for record in val_set.records}))
    return len(shared)


def saved_config(state: dict) -> TrainConfig:
    """The configuration in a trainer state; checkpoints written before ``sample_unit`` existed
    passed over sentences."""
    return TrainConfig.from_dict({"sample_unit": "sentence", **state["config"]})


def resume_config(resume: str | os.PathLike, overrides: dict) -> TrainConfig:
    """The configuration saved in a run's trainer state, with the overrides resuming allows."""
    state = load_trainer_state(resume)
    saved = saved_config(state)
    refused = sorted(k for k, v in overrides.items() if k not in RESUME_OVERRIDABLE and getattr(saved, k) != v)
    if refused:
        raise ValueError(f"cannot change {refused} when resuming (the run would not continue the same "
                         f"training); only {sorted(RESUME_OVERRIDABLE)} may change")
    folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    return saved.replace(**{**overrides, "out_dir": str(folder)})


# ------------------------------------------------------------------------------------- validation
@dataclass
class ValidationResult:
    """Sums over samples (so processes can add theirs) and a few samples for the picture."""

    samples: int = 0
    iou_sum: float = 0.0
    intersection: float = 0.0
    union: float = 0.0
    grid: list = field(default_factory=list)

    @property
    def miou(self) -> float:
        """Mean of the per-sample IoU."""
        return self.iou_sum / max(1, self.samples)

    @property
    def oiou(self) -> float:
        """Overall IoU: total intersection / total union over the split."""
        return self.intersection / self.union if self.union else 1.0

    def reduced(self, ctx: distributed.DistContext) -> "ValidationResult":
        sums = distributed.all_reduce_sum(ctx, [self.samples, self.iou_sum, self.intersection, self.union])
        return ValidationResult(int(sums[0]), sums[1], sums[2], sums[3], self.grid)


@torch.inference_mode()
def validate(clip: FrozenCLIP, fpn: AffordanceFPN, loader: DataLoader, device: torch.device,
             dtype: torch.dtype | None = None, threshold: float = 0.5, grid_samples: int = 0,
             channels_last: bool = False) -> ValidationResult:
    """mIoU and oIoU of sigmoid(logits) > ``threshold`` against the masks, at the input resolution
    inside the letterbox (see :func:`iou_counts`). The FPN runs in eval mode and is put back."""
    was_training = fpn.training
    fpn.eval()
    result = ValidationResult()
    try:
        for batch in loader:
            logits = forward_logits(clip, fpn, batch, device, dtype, channels_last).float()
            masks = batch["mask"].to(device)
            intersection, union = iou_counts(logits, masks, batch["box"], threshold)
            result.samples += len(masks)
            result.iou_sum += float(per_sample_iou(intersection, union).sum())
            result.intersection += float(intersection.sum())
            result.union += float(union.sum())
            if len(result.grid) < grid_samples:
                probs = torch.sigmoid(F.interpolate(logits[:, None], size=masks.shape[-2:], mode="bilinear",
                                                    align_corners=False)[:, 0]).cpu()
                for i in range(min(len(masks), grid_samples - len(result.grid))):
                    result.grid.append({"pixels": batch["pixels"][i], "mask": batch["mask"][i], "prob": probs[i],
                                        "text": batch["text"][i]})
    finally:
        fpn.train(was_training)
    return result


# ------------------------------------------------------------------------------------- training
def _loader(dataset, batch_size: int, config: TrainConfig, device: torch.device, sampler=None,
            training: bool = False) -> DataLoader:
    """Decoding and letterboxing run in ``num_workers`` processes; the training loader keeps its
    workers across epochs and drops a last partial micro-batch (BatchNorm needs >= 2 images)."""
    workers = config.num_workers
    # Workers are spawned, not forked: a fork of a process whose other threads hold locks (CUDA,
    # a DDS participant of rclpy in the same process, OpenMP) can hang the child for ever.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=training,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=training and workers > 0, worker_init_fn=worker_init if workers else None,
                      multiprocessing_context="spawn" if workers else None)


def _optimizer_step(model, clip, batches: Iterator, optimizer, scaler, plan: BatchPlan, config: TrainConfig,
                    device, dtype) -> float:
    """One optimizer step over ``plan.accumulation`` micro-batches; returns the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for index in range(plan.accumulation):
        batch = next(batches)
        last = index == plan.accumulation - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
        with sync:
            logits = forward_logits(clip, model, batch, device, dtype, config.channels_last)
            loss = pixel_text_loss(logits, batch["mask"].to(device, non_blocking=True))
            scaler.scale(loss / plan.accumulation).backward()
        total += loss.detach()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(total) / plan.accumulation


class _Run:
    """The state of one training process: models, data, logs. Built by :func:`train`."""

    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, resume: str | os.PathLike | None):
        self.config, self.ctx, self.device = config, ctx, ctx.device
        self.out = Path(config.out_dir)
        state = load_trainer_state(resume) if resume else None
        if state is None and (self.out / STATE_FILE).exists():
            raise ValueError(f"'{self.out}' already holds a run ({STATE_FILE}); continue it with --resume "
                             f"{self.out} or choose another --out-dir")
        if state is not None:
            self._check_resumable(state)
        self._build_data()  # before CLIP: a data error should not wait for the model to load
        if state is not None:
            self._check_same_data(state)
        torch.manual_seed(config.seed)  # the same random CLIP (pretrained=none) and FPN init in every process
        # No text cache: a cached embedding would depend on which batch first computed it (batched
        # matmuls round differently), so a resumed run would drift from an uninterrupted one.
        self.clip = FrozenCLIP.create(config.clip_model, config.clip_pretrained, self.device, text_cache_size=0)
        self.fpn = build_fpn(self.clip, config, self.device, ctx.syncs_batchnorm)
        if config.channels_last:
            self.clip.to(memory_format=torch.channels_last)
        torch.manual_seed(config.seed + ctx.rank)
        random.seed(config.seed + ctx.rank)
        np.random.seed((config.seed + ctx.rank) % 2**32)
        self.dtype = training_dtype(config.precision, self.device)
        self.optimizer = torch.optim.Adam(self.fpn.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                          weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        if state is not None:
            self.fpn.load_state_dict(state["fpn"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler.is_enabled() and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            elif self.scaler.is_enabled():  # saved without loss scaling (fp32/bf16 or another device)
                log.warning("The checkpoint has no fp16 loss-scaler state; loss scaling starts afresh.")
            if ctx.is_main:
                restore_rng(state["rng"])
            self.step = state["step"]
        self.model = self.fpn
        if ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.fpn, device_ids=ids)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for partial in [*self.out.glob(f"{FPN_FILE}.*.tmp"), *self.out.glob(f"{STATE_FILE}.*.tmp")]:
                log.info("Removing %s, a checkpoint write cut short by an earlier run's end.", partial.name)
                partial.unlink()  # a killed run's atomic write never renamed it; the checkpoint it aimed at stands
            (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            keep = self.step if state is not None else None
            self.train_log = CsvLog(self.out / "train_log.csv", TRAIN_COLUMNS, keep_until=keep)
            self.val_log = CsvLog(self.out / "val_log.csv", VAL_COLUMNS, keep_until=keep)

    def _check_resumable(self, state: dict) -> None:
        saved = saved_config(state)
        changed = sorted(f.name for f in dataclasses.fields(saved)
                         if f.name not in RESUME_OVERRIDABLE and getattr(saved, f.name) != getattr(self.config, f.name))
        if changed:
            raise ValueError(f"the configuration differs from the checkpoint's in {changed}; resume with the saved "
                             f"configuration (see resume_config)")
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(f"the checkpoint was written by {state['world_size']} process(es) and this run has "
                             f"{self.ctx.world_size}; resume with the same number so the data order continues")

    def _check_same_data(self, state: dict) -> None:
        """Refuse to resume on training data other than the checkpoint's: the position in the data
        order would point at other samples."""
        saved = state.get("train_data")
        if saved is None:
            log.warning("The checkpoint does not record its training data; cannot check that it is unchanged.")
        elif saved != self.train_fingerprint:
            raise ValueError(f"the training data differs from the checkpoint's: {self.train_fingerprint['samples']} "
                             f"samples (digest {self.train_fingerprint['digest']}) now, {saved['samples']} "
                             f"({saved['digest']}) when it was written, so the run would not continue its data "
                             f"order. Resume with the same data (--data-root and --coco-images pointing at the same "
                             f"files), or start a new run with another --out-dir.")

    def _build_data(self) -> None:
        c, ctx = self.config, self.ctx
        self.train_set = build_dataset(c.train_data, c.train_split, c.input_size, c.data_root, c.coco_images,
                                       per_object=c.sample_unit == "object", seed=c.seed)
        self.train_fingerprint = self.train_set.fingerprint()
        self.sampler = ResumableSampler(self.train_set, ctx.world_size, ctx.rank, c.seed)
        self.plan = plan_batches(c, self.sampler.num_samples, ctx.world_size)
        self.loader = _loader(self.train_set, self.plan.micro_batch, c, self.device, self.sampler, training=True)
        self.val_loader = None
        if c.val_data.strip():
            val_set = build_dataset(c.val_data, c.val_split, c.input_size, c.data_root, c.coco_images)
            val_set = val_set.subset(c.val_samples)
            if ctx.is_main:
                warn_of_shared_images(self.train_set, val_set)
            shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
            self.val_loader = _loader(shard, max(2, self.plan.micro_batch), c, self.device)

    # ------------------------------------------------------------------ outputs (process 0)
    def save(self) -> None:
        if not self.ctx.is_main:
            return
        recipe = {**self.config.to_dict(), "step": self.step}
        save_fpn(self.out / FPN_FILE, self.fpn, self.config.clip_model, self.config.input_size, recipe)
        save_trainer_state(self.out / STATE_FILE, trainer_state(self.step, self.config.to_dict(), self.ctx.world_size,
                                                                self.fpn, self.optimizer, self.scaler,
                                                                self.train_fingerprint))

    def run_validation(self) -> ValidationResult | None:
        if self.val_loader is None:
            return None
        c = self.config
        result = validate(self.clip, self.fpn, self.val_loader, self.device, self.dtype, c.iou_threshold,
                          c.grid_samples if self.ctx.is_main else 0, c.channels_last).reduced(self.ctx)
        if self.ctx.is_main:
            self.val_log.write(step=self.step, mIoU=f"{result.miou:.6f}", oIoU=f"{result.oiou:.6f}",
                               samples=result.samples, threshold=c.iou_threshold)
            if result.grid:
                save_prediction_grid(self.out / f"val_grid_step{self.step:07d}.png", result.grid, c.iou_threshold)
            log.info("step %d: validation mIoU %.4f oIoU %.4f on %d samples (sigmoid > %.2f)", self.step,
                     result.miou, result.oiou, result.samples, c.iou_threshold)
        return result

    # ------------------------------------------------------------------ the loop
    def fit(self, step_callback: StepCallback | None = None) -> ValidationResult | None:
        c, plan, ctx = self.config, self.plan, self.ctx
        if ctx.is_main:
            log.info("training %s FPN (%d parameters) on %d samples: %d steps of %d images (%d per forward x %d "
                     "accumulation x %d process(es)), %d steps per epoch, %s %s", c.clip_model,
                     count_trainable_parameters(self.fpn), len(self.train_set), plan.total_steps, c.batch_size,
                     plan.micro_batch, plan.accumulation, ctx.world_size, plan.steps_per_epoch, self.device,
                     {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype])
            normalised = batchnorm_images(plan, ctx)
            if normalised < c.batch_size:
                log.warning("BatchNorm statistics come from micro-batches of %d images, not from the whole batch of "
                            "%d: the run approximates batch-%d training (a larger --micro-batch-size, or more GPUs, "
                            "brings it closer)", normalised, c.batch_size, c.batch_size)
        self.fpn.train()
        bar = tqdm(total=plan.total_steps, initial=self.step, desc="train", unit="step", disable=not ctx.is_main,
                   dynamic_ncols=True)
        window_loss, window_steps, window_time, run_start = 0.0, 0, 0.0, time.perf_counter()
        last_saved, result = -1, None
        if c.val_every and self.step == 0:
            self.run_validation()  # the untrained baseline
        try:
            while self.step < plan.total_steps:
                epoch, in_epoch = divmod(self.step, plan.steps_per_epoch)
                self.sampler.set_position(epoch, in_epoch * plan.samples_per_step)
                batches = iter(self.loader)
                for _ in range(in_epoch, min(plan.steps_per_epoch, in_epoch + plan.total_steps - self.step)):
                    lr = get_lr(self.step, c, plan.total_steps)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    started = time.perf_counter()  # throughput counts data waits, not logging/saving/validation
                    loss = _optimizer_step(self.model, self.clip, batches, self.optimizer, self.scaler, plan, c,
                                           self.device, self.dtype)
                    window_time += time.perf_counter() - started
                    if not math.isfinite(loss) and self.dtype != torch.float16:
                        raise FloatingPointError(f"loss is {loss} at step {self.step}; lower --lr or use "
                                                 f"--precision fp32")
                    self.step += 1
                    window_loss, window_steps = window_loss + loss, window_steps + 1
                    bar.update(1)
                    if self.step % c.log_every == 0 or self.step == plan.total_steps:
                        self._log_window(epoch, lr, window_loss, window_steps, window_time, run_start, bar)
                        window_loss, window_steps, window_time = 0.0, 0, 0.0
                    if self.step % c.save_every == 0:
                        self.save()
                        last_saved = self.step
                    if c.val_every and self.step % c.val_every == 0:
                        result = self.run_validation()
                    if step_callback is not None:
                        step_callback(self.step, loss)
                del batches
        finally:
            bar.close()
        if last_saved != self.step:
            self.save()
        if not (c.val_every and self.step % c.val_every == 0 and result is not None):
            result = self.run_validation()
        return result

    def _log_window(self, epoch: int, lr: float, loss: float, steps: int, seconds: float, run_start: float,
                    bar: tqdm) -> None:
        """Loss averaged over the window's steps and all processes; images/s of the effective batch."""
        loss_sum, = distributed.all_reduce_sum(self.ctx, [loss])
        mean_loss = loss_sum / (steps * self.ctx.world_size)
        speed = steps * self.config.batch_size / max(seconds, 1e-9)
        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.1f}", lr=f"{lr:.2e}")
        if self.ctx.is_main:
            self.train_log.write(step=self.step, epoch=epoch, loss=f"{mean_loss:.6f}", lr=f"{lr:.6g}",
                                 images_per_s=f"{speed:.3f}", elapsed_s=f"{time.perf_counter() - run_start:.1f}")


def train(config: TrainConfig, resume: str | os.PathLike | None = None,
          step_callback: StepCallback | None = None) -> dict:
    """Train (or resume) the FPN. Returns ``{"step", "fpn", "out_dir", "val": {...} or None}``.

    ``step_callback(step, loss)`` runs in every process after each optimizer step (tests, notebooks).
    Under torchrun the process group is joined from the environment and left at the end.
    """
    ctx = distributed.setup(config.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not config.deterministic
    try:
        run = _Run(config, ctx, resume)
        result = run.fit(step_callback)
        val = None if result is None else {"mIoU": result.miou, "oIoU": result.oiou, "samples": result.samples}
        return {"step": run.step, "fpn": str(run.out / FPN_FILE), "out_dir": str(run.out), "val": val}
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        distributed.cleanup(ctx)
