"""The run template and epoch loop shared by the teacher's and the student's jobs.

Randomness is derived from (seed, epoch, step, rank) rather than carried along: each batch's sample
order comes from a per-epoch permutation, each sample's augmentation from a per-sample seed, and the
model's masking and dropout from a per-step seed. A run resumed from any checkpoint therefore takes
exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from malm_edge.training.data.dataset import collate_batch
from malm_edge.training.errors import TrainingError
from malm_edge.training.harness import checkpoint as ckpt
from malm_edge.training.harness.curves import write_curves
from malm_edge.training.harness.distributed import (
    WorldInfo,
    all_ranks,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    default_device,
    init_distributed,
)
from malm_edge.training.harness.progress import TrainProgress
from malm_edge.training.harness.run import (
    RunError,
    RunPaths,
    append_metrics,
    truncate_metrics_after,
)
from malm_edge.training.schedule import DistillConfig, TrainConfig

log = logging.getLogger(__name__)


RunT = TypeVar("RunT")


class NonFiniteLossError(TrainingError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(TrainingError, RuntimeError):
    """SIGINT or SIGTERM stopped the run after a checkpoint at the current step (exit code 130)."""

    exit_code = 130


@dataclass
class StopRequest:
    """Set by the signal handler; the loop checks it after every step."""

    signal_name: str | None = None


def _signal_safe_notice(message: str) -> None:
    """A warning line written straight to fd 2, in the log's format. A signal handler runs between two
    bytecodes of the main thread, maybe inside a write to sys.stderr's buffer: logging from it would
    re-enter that buffer ("reentrant call inside BufferedWriter", printed as a logging traceback)."""
    line = f"{time.strftime('%H:%M:%S')} WARNING {log.name}: {message}\n"
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass  # stderr closed: the stop itself still happens


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """While inside: SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step.

    A second signal stops at once, without saving (the previous checkpoint is intact). Signal
    handlers can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.signal_name is not None:
            raise KeyboardInterrupt(f"second {name}: stopped without saving")
        stop.signal_name = name
        _signal_safe_notice(f"{name}: saving a checkpoint after this step, then stopping (again to stop at once, "
                            "unsaved)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _ignore_sigint_in_worker(worker_id: int) -> None:
    """DataLoader workers share the terminal's process group: leave Ctrl-C to the main process,
    which checkpoints and then shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_job(open_run: Callable[[WorldInfo], RunT], fit: Callable[[RunT, WorldInfo, torch.device], dict]) -> dict:
    """The template of every training job: pick the device, join the process group (under torchrun),
    open the run (new or resumed), fit it, and always leave the process group.

    Args:
        open_run: `open_run(world) -> run`: start a new run folder or reopen one to resume.
        fit: `fit(run, world, device) -> summary`: build the model and run the epochs.
    """
    device = default_device()
    world = init_distributed(device.type)
    try:
        return fit(open_run(world), world, device)
    finally:
        cleanup_distributed()


def loss_terms(terms: dict[str, Any]) -> dict[str, float]:
    """The named loss terms of a forward output (`loss`, `loss_*`), as floats for logging."""
    return {k: float(v.detach()) for k, v in terms.items() if k.startswith("loss") and torch.is_tensor(v)}


def raise_if_non_finite(loss: torch.Tensor, terms: dict[str, Any], epoch: int) -> None:
    """Raise NonFiniteLossError (naming the terms) when the loss is NaN or infinite on any rank.

    Ranks call it together, before any backward pass, so the weights are never touched by a bad step.
    """
    if not bool(torch.isfinite(all_reduce_mean(loss.detach()))):
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch}: {loss_terms(terms)}")


@dataclass
class TrainState:
    """Counters that locate the run in its schedule (saved with every checkpoint)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_r1: float = -1.0
    n_skipped_images: int = 0
    history: list[dict] = field(default_factory=list)


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple of ints and strings."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """Yields (index, sample_seed) for this rank's share of one epoch, from `start_step` on.

    The permutation depends only on (seed, epoch); ranks take interleaved slices of it, and the
    epoch is cut to whole batches on every rank so all ranks take the same number of steps. With
    `augmentations` = K > 0, each item cycles through K fixed augmentations (epoch mod K), so
    per-augmentation results (the teacher's embeddings in distillation) can be cached.

    With `groups` (the item indices of each recipe), an epoch is a pass over the groups: the
    permutation orders the groups and each group contributes one of its items, drawn from
    (seed, epoch), so an epoch sees every recipe once (TFood's recipe-level epoch) and one batch
    never holds two items of one group. Yielded indices are still items, so per-item caches work.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        world: WorldInfo,
        start_step: int = 0,
        augmentations: int = 0,
        augment_seed: int | None = None,
        groups: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.n_items, self.batch_size, self.seed, self.epoch = n_items, batch_size, seed, epoch
        self.world, self.start_step, self.augmentations = world, start_step, augmentations
        self.augment_seed = seed if augment_seed is None else augment_seed
        self.groups = groups

    @property
    def n_units(self) -> int:
        """What one epoch passes over: groups (recipes) when given, else items."""
        return self.n_items if self.groups is None else len(self.groups)

    def _epoch_items(self) -> np.ndarray:
        """(n_units,) item index of each unit in this epoch (identity without groups)."""
        if self.groups is None:
            return np.arange(self.n_items)
        sizes = np.array([len(group) for group in self.groups])  # (G,)
        draws = np.random.default_rng(derive_seed(self.seed, "pick", self.epoch)).random(len(sizes))  # (G,)
        picks = np.minimum((draws * sizes).astype(np.int64), sizes - 1)  # (G,)
        return np.array([group[pick] for group, pick in zip(self.groups, picks)], dtype=np.int64)

    def sample_seed(self, index: int) -> int:
        """The augmentation seed of one item in this epoch."""
        if self.augmentations:
            return derive_seed(self.augment_seed, "augment", index, self.epoch % self.augmentations)
        return derive_seed(self.seed, "sample", self.epoch, index)

    def steps_per_epoch(self) -> int:
        return self.n_units // (self.batch_size * self.world.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng(derive_seed(self.seed, "order", self.epoch)).permutation(self.n_units)
        order = self._epoch_items()[order]  # (n_units,) items
        mine = order[self.world.rank :: self.world.world_size][: self.steps_per_epoch() * self.batch_size]
        for index in mine[self.start_step * self.batch_size :]:
            yield int(index), self.sample_seed(int(index))

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * self.batch_size


class SeededItems(Dataset):
    """Seeds Python, numpy and torch from the sample seed before fetching an item, so augmentation
    is the same whichever worker fetches it and whenever."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict | None:
        index, sample_seed = key
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.manual_seed(sample_seed)
        item = self.dataset[index]
        if item is not None:
            item["item_index"] = index
        return item


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rates(
    optimizer: torch.optim.Optimizer, factor: float, frozen: bool = False, frozen_group: str = "image"
) -> None:
    """Scale each group's base rate; a frozen group gets rate zero (freezing that is safe under DDP)."""
    for group in optimizer.param_groups:
        is_frozen = frozen and group.get("name") == frozen_group
        group["lr"] = 0.0 if is_frozen else group["base_lr"] * factor


def save_state_checkpoint(
    checkpoint_root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    *,
    config_hash: str,
    is_best: bool,
) -> None:
    """Write model weights, optimizer state and counters as `step-<global_step>`."""
    meta = {
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "best_r1": state.best_r1,
        "config_hash": config_hash,
    }
    train_state = {
        "optimizer": optimizer.state_dict(),
        "counters": {k: v for k, v in vars(state).items() if k != "history"},
        "history": state.history,
    }
    ckpt.save_checkpoint(
        checkpoint_root, model.state_dict(), train_state, meta, tag=f"step-{state.global_step:08d}", is_best=is_best
    )


def checkpoint_on_main(
    world: WorldInfo,
    checkpoint_root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    *,
    config_hash: str,
    is_best: bool,
) -> None:
    """Rank 0 saves; every rank waits until it has."""
    if world.is_main:
        save_state_checkpoint(checkpoint_root, model, optimizer, state, config_hash=config_hash, is_best=is_best)
    barrier()


def restore_state_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainState:
    """Load a run's `last` checkpoint into model and optimizer; return its counters."""
    folder = ckpt.resolve_checkpoint(run_dir, "last")
    ckpt.load_weights_into(model, ckpt.load_model_state(folder), source=folder)
    saved = ckpt.load_train_state(folder)
    optimizer.load_state_dict(saved["optimizer"])
    state = TrainState(**saved["counters"], history=list(saved.get("history", [])))
    truncate_metrics_after(run_dir, state.global_step)
    log.info("resumed %s at epoch %d step %d", folder, state.epoch, state.step_in_epoch)
    return state


# --------------------------------------------------------------------------------------------
# The epoch loop, shared by teacher training and distillation


@dataclass
class LoopSpec:
    """What a training loop needs; the step and validation are the caller's.

    Attributes:
        run_dir: The run folder (metrics.jsonl, checkpoints/).
        model: The module whose state is checkpointed (not the DDP wrapper).
        optimizer: Its optimizer; every param group has `base_lr` and `name`.
        train_set: Map-style dataset of training items (None for an unreadable image).
        step: `step(batch, epoch) -> {name: float}` does forward, backward and the optimizer step.
        validate: `validate() -> retrieval_metrics dict`, called on rank 0 after each epoch.
        schedule: A TrainConfig or DistillConfig (epochs, batch_size, warmup_steps, seed, num_workers,
            log_every, save_every_steps are read from it).
        config_hash: Recorded in each checkpoint.
        collate: Batch collation that drops None items and counts them in `n_skipped`.
        frozen_group_epochs: Epochs during which the param group named `frozen_group` has rate 0.
        augmentations: Cycle each item through this many fixed augmentations (0: fresh each epoch).
        command: The CLI command that continues this run, named in the interruption message.
        groups: Item indices of each recipe: an epoch is then one item of every recipe (EpochSampler);
            None: an epoch is every item.
        set_frozen: Called with True / False at the start of every epoch (in and out of the frozen
            phase) to stop gradients at the frozen group (requires_grad), not only its rate.
    """

    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    step: Callable[[dict, int], dict[str, float]]
    validate: Callable[[], dict]
    schedule: TrainConfig | DistillConfig
    config_hash: str
    collate: Callable[[list], dict] = collate_batch
    frozen_group: str = "image"
    frozen_group_epochs: int = 0
    augmentations: int = 0
    command: str = "malm-edge train"
    groups: Sequence[np.ndarray] | None = None
    set_frozen: Callable[[bool], None] | None = None


def run_epochs(
    spec: LoopSpec, world: WorldInfo, state: TrainState, *, progress: bool, stop_after_steps: int | None
) -> dict:
    """Train from `state` to the last epoch (or `stop_after_steps`); return a summary."""
    schedule = spec.schedule
    first_epoch = EpochSampler(
        len(spec.train_set), schedule.batch_size, seed=schedule.seed, epoch=0, world=world, groups=spec.groups
    )
    steps_per_epoch = first_epoch.steps_per_epoch()
    if steps_per_epoch == 0:
        unit = "pairs" if spec.groups is None else "recipes"
        raise RunError(
            f"{spec.run_dir}: {first_epoch.n_units} training {unit} are fewer than one batch of "
            f"{spec.schedule.batch_size * world.world_size}; lower --batch-size"
        )
    total_steps = steps_per_epoch * spec.schedule.epochs
    summary: dict = {"run": str(spec.run_dir), "stopped_early": False}
    bar = TrainProgress(
        total_steps, enabled=progress and world.is_main, completed=state.global_step, epochs=spec.schedule.epochs
    )
    with stop_on_signals(StopRequest()) as stop, bar:
        while state.epoch < spec.schedule.epochs:
            try:
                finished = _run_epoch(spec, world, state, bar, total_steps, stop_after_steps, stop)
            except NonFiniteLossError as error:
                raise NonFiniteLossError(
                    f"{error}; the run stopped, its last good checkpoint is kept in "
                    f"{RunPaths(spec.run_dir).checkpoints}"
                ) from None
            if not finished:
                summary["stopped_early"] = True
                break
            _end_epoch(spec, world, state)
            if _stop_requested(stop):
                _interrupted(spec, state, total_steps, stop)
    log.info("rank %d stopped at global step %d", world.rank, state.global_step)
    last = state.history[-1]["val"] if state.history else None
    summary.update(
        epochs_done=state.epoch,
        global_step=state.global_step,
        best_val_r1=state.best_r1,
        last_val=last,
        skipped_images=state.n_skipped_images,
    )
    return summary


def _stop_requested(stop: StopRequest) -> bool:
    """Whether any rank was signalled (all ranks stop at the same step)."""
    return not all_ranks(stop.signal_name is None)


def _interrupted(spec: LoopSpec, state: TrainState, total_steps: int, stop: StopRequest) -> None:
    """Raise TrainingInterrupted once the checkpoint at the current step is written."""
    raise TrainingInterrupted(
        f"interrupted ({stop.signal_name or 'signal on another rank'}) at step {state.global_step} of "
        f"{total_steps}, checkpoint saved; rerun the same command with --resume to continue: "
        f"{spec.command} --resume {spec.run_dir}"
    )


def _run_epoch(
    spec: LoopSpec,
    world: WorldInfo,
    state: TrainState,
    bar: Any,
    total_steps: int,
    stop_after_steps: int | None,
    stop: StopRequest | None = None,
) -> bool:
    """Train the rest of the current epoch; False when stopped by `stop_after_steps`."""
    sampler = EpochSampler(
        len(spec.train_set),
        spec.schedule.batch_size,
        seed=spec.schedule.seed,
        epoch=state.epoch,
        world=world,
        start_step=state.step_in_epoch,
        augmentations=spec.augmentations,
        augment_seed=getattr(spec.schedule, "augment_seed", None),
        groups=spec.groups,
    )
    loader = torch.utils.data.DataLoader(
        SeededItems(spec.train_set),
        batch_size=spec.schedule.batch_size,
        sampler=sampler,
        num_workers=spec.schedule.num_workers,
        collate_fn=spec.collate,
        worker_init_fn=_ignore_sigint_in_worker if spec.schedule.num_workers else None,
    )
    frozen = state.epoch < spec.frozen_group_epochs
    if spec.set_frozen is not None:
        spec.set_frozen(frozen)
    window_start, window_samples = time.perf_counter(), 0
    for batch in loader:
        torch.manual_seed(derive_seed(spec.schedule.seed, "step", state.global_step, world.rank))
        set_learning_rates(
            spec.optimizer,
            lr_factor(state.global_step, total_steps, spec.schedule.warmup_steps),
            frozen,
            spec.frozen_group,
        )
        terms = spec.step(batch, state.epoch) if all_ranks("image" in batch) else {}
        state.step_in_epoch += 1
        state.global_step += 1
        state.n_skipped_images += int(batch.get("n_skipped", 0))
        window_samples += len(batch.get("image", ())) * world.world_size
        terms["samples_per_s"] = window_samples / max(time.perf_counter() - window_start, 1e-9)
        bar.update(state.epoch, terms, samples=len(batch.get("image", ())) * world.world_size)
        if world.is_main and state.global_step % spec.schedule.log_every == 0:
            lr = spec.optimizer.param_groups[-1]["lr"]
            append_metrics(
                spec.run_dir,
                {"type": "step", "epoch": state.epoch, "global_step": state.global_step, "lr": lr, **terms},
            )
            window_start, window_samples = time.perf_counter(), 0
        if spec.schedule.save_every_steps and state.global_step % spec.schedule.save_every_steps == 0:
            _save(spec, world, state, is_best=False)
        if stop_after_steps is not None and state.global_step >= stop_after_steps:
            _save(spec, world, state, is_best=False)
            return False
        if stop is not None and _stop_requested(stop):
            if state.step_in_epoch < sampler.steps_per_epoch():  # else the epoch end saves it
                _save(spec, world, state, is_best=False)
                _interrupted(spec, state, total_steps, stop)
            break
    return True


def _save(spec: LoopSpec, world: WorldInfo, state: TrainState, *, is_best: bool) -> None:
    checkpoint_on_main(
        world,
        RunPaths(spec.run_dir).checkpoints,
        spec.model,
        spec.optimizer,
        state,
        config_hash=spec.config_hash,
        is_best=is_best,
    )


def _end_epoch(spec: LoopSpec, world: WorldInfo, state: TrainState) -> None:
    """Validate, log, move the counters to the next epoch and checkpoint (best by val R@1)."""
    is_best = False
    if world.is_main:
        metrics = spec.validate()
        r1 = metrics["image_to_recipe"]["r1"]
        is_best = r1 > state.best_r1
        state.best_r1 = max(state.best_r1, r1)
        record = {
            "type": "epoch",
            "epoch": state.epoch,
            "global_step": state.global_step,
            "val": metrics,
            "skipped_images": state.n_skipped_images,
        }
        state.history.append(record)
        append_metrics(spec.run_dir, record)
        write_curves(spec.run_dir)
        log.info(
            "epoch %d/%d: val image->recipe R@1 %.3f medR %.1f (bag %d)",
            state.epoch + 1,
            spec.schedule.epochs,
            r1,
            metrics["image_to_recipe"]["medr"],
            metrics["bag_size"],
        )
    state.epoch += 1
    state.step_in_epoch = 0
    _save(spec, world, state, is_best=is_best)
