"""The course's training program: one file that runs on a laptop, under torchrun, and as a SageMaker entry point.

    python -m utils.train --data runs/interactive/token_shards --steps 200            # one process
    torchrun --nproc-per-node 2 -m utils.train --data ... --strategy ddp              # two ranks (gloo on CPU)
    torchrun --nproc-per-node 2 -m utils.train --data ... --strategy fsdp             # FSDP2 fully_shard

Defined for notebooks 05 and 09 (book chapters 5 and 9); notebook 08 runs it on SageMaker. Settings, their order of
precedence (flag > SageMaker environment > default) and the format of the metric lines are in `utils.train_settings`.
It trains the GPT-2-style model of `utils.models.small_gpt` on packed token shards (`utils.loaders`), or a small ViT
on images, with the optimizer recipe of `utils.pretraining` (AdamW with betas 0.9/0.95 and weight decay, transformers'
linear warm-up + cosine schedule) with one difference: the cosine ends at `--min-lr-ratio` x the peak instead of 0
(transformers' `get_cosine_with_min_lr_schedule_with_warmup_lr_rate`, whose warm-up starts at 1/warmup of the peak, so
no step runs at learning rate 0), so a run resumed with more steps still learns. `train()` reads top to bottom:

    run = build(settings)        data (checked; refused if damaged or too small), ranks, model, optimizer, schedule,
                                 checkpoint folder
    restore(run)                 the newest valid checkpoint of this run, or a fresh start
    while run.step < steps:      train_step (micro-steps, gradient norm, non-finite guard, optimizer), report,
                                 evaluate every --eval-every steps, checkpoint every --checkpoint-every steps,
                                 stop (after a checkpoint) when any rank got SIGTERM
    finish(run)                  last checkpoint, `save_pretrained` model for transformers

Exit codes: 0 done; 2 refused before training (a setting, data that fails its checks or is too small for one batch,
a checkpoint folder that is not writable or too full, a checkpoint of another run); 3 pre-flight failed; 4 non-finite
loss or gradient (nothing of that state is saved); 5 a collective timed out (the message names the ranks that stopped
reporting); 143 stopped by SIGTERM after writing a checkpoint. CONTRIBUTING's table "what the training program
promises" names the test that holds each of these.

Checkpoints: `<checkpoint-dir>/step-NNNNNNN/` holds `state.pt` (model + optimizer, gathered on rank 0; one process
and DDP) or `sharded/` (FSDP: `torch.distributed.checkpoint`, each rank writes and reads its own shard), one
`rng-rank<r>.pt` per rank, and `run.json` (step, data position, schedule, the settings that define the run, and the
size and SHA-256 of every file), written last. A save goes to `step-NNNNNNN.partial/` and is renamed when complete,
so a crash at any point leaves the previous checkpoints intact. Resuming takes the newest checkpoint whose files
match `run.json`, moves corrupt ones to `set-aside/` with the reason, and refuses a checkpoint of another run naming
each difference (`RESUMABLE_CHANGES` lists the settings that may change). Rotation keeps the newest
`--keep-checkpoints` complete checkpoints and never the one just written. Sharded checkpoints need a folder every
rank sees (one host, or a shared file system).

Depends on `utils.train_settings`, `utils.loaders`, `utils.models`, `utils.sizing` and `utils.machine`: it is the
course's program, the one documented exception to the one-dependency rule for `utils` modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from utils.loaders import (
    IMAGES_FILE,
    INDEX_FILE,
    PackedBlocks,
    ResumableDistributedSampler,
    ShardError,
    causal_lm_batch,
    image_batch,
    read_image_arrays,
    sha256_file,
    training_data_dir,
    verify_shards,
)
from utils.machine import has_fast_cpu_bf16, measure_matmul_throughput
from utils.models import small_gpt, small_vit
from utils.sizing import TransformerShape, training_flops_per_token
from utils.train_settings import (
    EXIT_BAD_INPUT,
    SettingsError,
    TrainSettings,
    metric_line,
    parse_settings,
    resolve_paths,
)

EXIT_PREFLIGHT, EXIT_NON_FINITE, EXIT_TIMEOUT, EXIT_SIGTERM = 3, 4, 5, 128 + signal.SIGTERM
ADAMW_BETAS = (0.9, 0.95)  # as utils.pretraining and GPT-3 (Brown et al., 2020, appendix B)
# Settings that define a run: resuming with any of them changed is refused. Everything else may change on resume.
RUN_DEFINING = ("model", "layers", "width", "heads", "batch_size", "grad_accum", "strategy", "seed")
RUN_DEFINING += ("lr", "warmup", "min_lr_ratio", "weight_decay", "clip")  # the optimizer's recipe
RESUMABLE_CHANGES = "steps (the cosine decay is recomputed for the new length from the resumed step on), " + ", ".join(
    f.name for f in dataclasses.fields(TrainSettings) if f.name not in (*RUN_DEFINING, "steps", "data")
)
SAVE_PHASES = ("files written", "manifest written", "published", "rotated")
PHASES = ("reading data", "computing", "reporting", "evaluating", "checkpointing")  # of a step, in order


class Stop(Exception):
    """Ends the program with `code` and a message saying what happened and what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Callbacks:
    """Hooks for code that drives the program in-process: called at the end of every step and after each phase of a
    checkpoint save (`SAVE_PHASES`). The course's fault tests inject crashes and bad values through them."""

    def on_step_end(self, run: Run) -> None:
        """After step `run.step` was trained and reported, before its checkpoint."""

    def on_save(self, run: Run, phase: str) -> None:
        """After `phase` of saving the checkpoint for `run.step`."""


@dataclass
class Run:
    """Everything one rank holds for a run; `build` makes it, the loop advances `step`."""

    settings: TrainSettings
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    precision_note: str
    model: torch.nn.Module  # wrapped for DDP or sharded by FSDP; checkpoints use this one
    forward: Callable[..., Any]  # the model, compiled with --compile
    build_model: Callable[[], torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: ResumableDistributedSampler
    batches: Iterator[dict[str, torch.Tensor]]
    validation: Any  # a dataset of held-out blocks, or None
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    identity: dict[str, Any]  # the settings that define the run, recorded in every checkpoint
    flops_per_token: float  # model FLOPs: every matrix multiply once forward, twice backward
    hardware_flops_per_token: float  # what the hardware runs: more with activation checkpointing (recomputation)
    peak_flops: float
    peak_note: str
    data_note: str  # what was checked of the data before training
    tokens_per_step: int
    checkpoints: Path
    output: Path
    store: Any = None  # the rendezvous store, for progress reports when a collective times out
    step: int = 0
    bad_steps: int = 0
    resumed_from: int = 0
    last_saved: int = -1
    memory: dict[str, int] | None = None
    callbacks: Sequence[Callbacks] = field(default_factory=tuple)

    def beat(self, phase: str) -> None:
        """Tell the other ranks, through the store, where this rank is (read when a collective times out)."""
        if self.store is not None:
            self.store.set(f"progress/{self.rank}", json.dumps([self.step, PHASES.index(phase)]))


# ---------------------------------------------------------------------------------------------------- ranks


def setup_distributed(timeout_seconds: float) -> tuple[int, int, torch.device, Any]:
    """(rank, world size, device, store). Under torchrun (WORLD_SIZE set) joins the rendezvous with NCCL on GPUs,
    gloo on CPUs, with `timeout_seconds` for every collective; alone, returns (0, 1, device, None)."""
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    store = None
    if world > 1:
        rank = int(os.environ["RANK"])
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        timeout = datetime.timedelta(seconds=timeout_seconds)
        host, port, is_master = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank == 0 and not agent_store
        base = dist.TCPStore(
            host, port, world, is_master=is_master, timeout=max(timeout, datetime.timedelta(seconds=60))
        )
        # key the store by torchrun's restart count, or a restarted rank reads the dead ranks' addresses from
        # torchrun's store (seen with torch 2.13 and gloo) and the restart hangs
        store = dist.PrefixStore(f"restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=dist.PrefixStore("pg", store),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), store
    return rank, world, torch.device("cpu"), store


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's `value` on every rank (a no-op alone)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, world: int) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def straggler_problem(gflops: list[float], tolerance: float) -> str | None:
    """Which ranks are slow compared with the others: a rank below `tolerance` x the median rank fails."""
    median = float(np.median(gflops))
    slow = [f"rank {r} ({g:.0f} GFLOP/s)" for r, g in enumerate(gflops) if g < tolerance * median]
    if slow:
        return f"{', '.join(slow)} below {tolerance:.0%} of the median rank ({median:.0f} GFLOP/s): a throttled host"
    return None


def preflight(run: Run) -> list[str]:
    """Health checks every rank runs before training (notebook 08): the device is visible, a one-element all-reduce
    returns the world size, each rank's 1024 x 1024 fp32 matmul is within `--preflight-tolerance` of the median rank
    (and above `--preflight-gflops` when set). Raises Stop(3) naming the failed check, so a bad host stops the job in
    seconds instead of slowing every rank for hours."""
    device, world, s = run.device, run.world, run.settings
    if device.type == "cuda" and torch.cuda.device_count() <= device.index:
        raise Stop(EXIT_PREFLIGHT, f"pre-flight: {device} not visible ({torch.cuda.device_count()} GPUs)")
    lines = [f"device {device} visible"]
    if world > 1:
        ones = torch.ones(1, device=device)
        dist.all_reduce(ones)
        if int(ones.item()) != world:
            raise Stop(EXIT_PREFLIGHT, f"pre-flight: all-reduce returned {ones.item()}, expected {world}")
        lines.append(f"all-reduce over {world} ranks correct")
    measured = measure_matmul_throughput(1024, torch.float32, device.type, min_run_time=0.2)["gflops"]
    if measured < s.preflight_tolerance * s.preflight_gflops:
        floor = f"{s.preflight_tolerance:.0%} of the expected {s.preflight_gflops:.0f}"
        raise Stop(EXIT_PREFLIGHT, f"pre-flight: matmul at {measured:.0f} GFLOP/s, below {floor}: a throttled device")
    if problem := straggler_problem(gather(measured, world), s.preflight_tolerance):
        raise Stop(EXIT_PREFLIGHT, f"pre-flight: {problem}")
    lines.append(f"matmul {measured:.0f} GFLOP/s, within {s.preflight_tolerance:.0%} of the median rank")
    return lines


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The autocast dtype and why. bf16 on CPUs without native bf16 units runs many times slower than fp32, so
    `auto` (and an explicit bf16 request on such a CPU, with a note) fall back to fp32 there."""
    if requested == "fp32":
        return torch.float32, "fp32 requested"
    if device.type == "cuda":
        return (torch.bfloat16, "bf16 on GPU") if torch.cuda.is_bf16_supported() else (torch.float32, "GPU lacks bf16")
    if requested == "bf16" and has_fast_cpu_bf16():
        return torch.bfloat16, "bf16 requested; this CPU has native bf16 instructions"
    if requested == "bf16":
        return torch.float32, "bf16 requested but this CPU has no native bf16 (it would run far slower): using fp32"
    return torch.float32, "fp32: the course default on CPUs"


def wrap_model(model: torch.nn.Module, strategy: str, world: int, device: torch.device) -> torch.nn.Module:
    """DDP replicates the model and all-reduces gradients; FSDP2's `fully_shard` shards each block's parameters,
    gradients and optimizer state across ranks (it runs on CPU with gloo in this torch version)."""
    if strategy == "ddp" and world > 1:
        devices = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=devices)
    if strategy == "fsdp" and world > 1:
        from torch.distributed.fsdp import fully_shard

        blocks = model.transformer.h if hasattr(model, "transformer") else model.vit.encoder.layer
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    return model


# ---------------------------------------------------------------------------------------------------- data


def data_fingerprint(folder: Path) -> str:
    """SHA-256 of what identifies a run's data: the shard manifest (block, dtype, vocabulary, every shard's name,
    blocks and hash), or the images file."""
    if (folder / INDEX_FILE).exists():
        index = json.loads((folder / INDEX_FILE).read_text())
        keys = ("block", "dtype", "vocab_size", "shards")
        return hashlib.sha256(json.dumps({k: index.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()
    return sha256_file(folder / IMAGES_FILE)


def open_data(folder: Path, settings: TrainSettings, augment: bool) -> tuple[Any, Callable[[list[Any]], Any]]:
    """The dataset in `folder` and its collate function: packed token blocks for the GPT (opening runs the fast
    checks of `loaders.read_index`: index, dtype, vocabulary, sizes; a failure is refused with its fix), images for
    the ViT."""
    if settings.model == "gpt":
        try:
            return PackedBlocks(folder), causal_lm_batch
        except ShardError as error:
            raise Stop(EXIT_BAD_INPUT, str(error)) from None
    return read_image_arrays(folder, augment=augment, seed=settings.seed), image_batch


def verify_data(settings: TrainSettings, folders: Sequence[Path], world: int) -> str:
    """The full check of every shard before training (`loaders.verify_shards`: each file's SHA-256 against the index
    and every token id against the vocabulary), run by local rank 0 of each host, whose ranks read the same files,
    while the host's other ranks wait; then every rank refuses if any host found a problem, so no rank trains on data
    another one refused. The check must end within --collective-timeout (it reads about 0.4 GB/s on 2 busy CPU
    cores, benchmarks/shard_verification.py); for data far larger, check once after copying and pass
    --verify-data false. Returns the line `announce` prints about the data check."""
    if not settings.verify_data or settings.model != "gpt":
        return "data: fast checks only (index, dtype, vocabulary, sizes); --verify-data true checks every byte"
    start, problem = time.perf_counter(), None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            for folder in folders:
                verify_shards(folder)
        except (ShardError, OSError) as error:
            problem = f"{error} (found by rank {os.environ.get('RANK', '0')}'s full check of the data)"
    if found := [p for p in gather(problem, world) if p]:  # the barrier: every rank waits here for the check
        raise Stop(EXIT_BAD_INPUT, found[0])
    took = time.perf_counter() - start
    return f"data: every shard's SHA-256 and token ids checked in {took:.2f} s (--verify-data false skips it)"


def check_enough_data(count: int, batch_size: int, world: int, what: str, folder: Path) -> None:
    """Refuse data with fewer items than one batch on every rank (the loader would yield nothing and the loop would
    wait forever), with the numbers."""
    if count < batch_size * world:
        raise Stop(
            EXIT_BAD_INPUT,
            f"{what} in {folder} has {count} full blocks, fewer than one step needs "
            f"(--batch-size {batch_size} x {world} rank(s) = {batch_size * world}): write more "
            "data or lower --batch-size",
        )


def batches(dataset: Any, sampler: ResumableDistributedSampler, loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Batches forever, epoch after epoch, from wherever the sampler was resumed; tracks its position (and, for
    augmented images, tells the dataset the epoch so each epoch draws new augmentations)."""
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(sampler.epoch)
        for batch in loader:
            sampler.skip += len(batch["labels"])  # position within the epoch, saved in checkpoints
            yield batch
        sampler.set_epoch(sampler.epoch + 1)


# ---------------------------------------------------------------------------------------------------- build


def build(settings: TrainSettings, callbacks: Sequence[Callbacks] = ()) -> Run:
    """Join the ranks and build everything a run needs, refusing (Stop) what cannot work before any training."""
    if (world := int(os.environ.get("WORLD_SIZE", "1"))) > 1 and settings.strategy == "none":
        raise Stop(
            EXIT_BAD_INPUT,
            f"--strategy none with {world} ranks would train {world} unsynchronised copies: "
            "use --strategy ddp or fsdp, or run one process",
        )
    folder = training_data_dir(explicit=settings.data)  # the data is checked on every rank before the rendezvous,
    dataset, collate = open_data(folder, settings, augment=True)  # so a rank that refuses never waits for the others
    check_enough_data(len(dataset), settings.batch_size, world, "the training data", folder)
    validation, folders = None, [folder]
    if settings.validation_data:
        folders.append(Path(settings.validation_data))
        validation, _ = open_data(folders[-1], settings, augment=False)
        check_enough_data(len(validation), 1, world, "the validation data", folders[-1])
    build_model, vocab, context = model_factory(settings, dataset, validation)
    rank, world, device, store = setup_distributed(settings.collective_timeout)
    data_note = verify_data(settings, folders, world)
    dtype, precision_note = choose_precision(settings.precision, device)
    torch.manual_seed(settings.seed)
    model = build_model().to(device)
    if settings.activation_checkpointing:
        model.activation_checkpointing_enable()
    model = wrap_model(model, settings.strategy, world, device)
    optimizer = torch.optim.AdamW(model.parameters(), settings.lr, ADAMW_BETAS, weight_decay=settings.weight_decay)
    from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate as cosine_with_warmup

    scheduler = cosine_with_warmup(optimizer, settings.warmup, settings.steps, min_lr_rate=settings.min_lr_ratio)
    sampler = ResumableDistributedSampler(dataset, num_replicas=world, rank=rank, seed=settings.seed)
    loader = DataLoader(
        dataset,
        settings.batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=True,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if settings.workers else None,  # overlap reading with compute
        persistent_workers=settings.workers > 0 and not hasattr(dataset, "set_epoch"),
    )
    identity = {name: getattr(settings, name) for name in RUN_DEFINING}
    identity |= {"vocab_size": vocab, "context": context, "world_size": world, "data": data_fingerprint(folder)}
    if settings.peak_flops:
        peak, peak_note = settings.peak_flops, "given by --peak-flops"
    else:
        peak = measure_matmul_throughput(2048, dtype, device.type)["gflops"] * 1e9
        peak_note = f"measured now: {str(dtype).removeprefix('torch.')} 2048 x 2048 matmul"
    shape = TransformerShape(vocab, settings.width, settings.layers, settings.heads, 4 * settings.width, context)
    run = Run(
        settings=settings,
        rank=rank,
        world=world,
        device=device,
        dtype=dtype,
        precision_note=precision_note,
        model=model,
        forward=torch.compile(model) if settings.compile else model,
        build_model=build_model,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        batches=batches(dataset, sampler, loader),
        validation=validation,
        collate=collate,
        identity=identity,
        flops_per_token=training_flops_per_token(shape, context),
        hardware_flops_per_token=training_flops_per_token(shape, context, settings.activation_checkpointing),
        peak_flops=peak,
        peak_note=peak_note,
        data_note=data_note,
        tokens_per_step=settings.batch_size * settings.grad_accum * context * world,
        checkpoints=Path(settings.checkpoint_dir),
        output=Path(settings.output),
        store=store,
        callbacks=callbacks,
    )
    check_folders(run)
    return run


def model_factory(settings: TrainSettings, dataset: Any, validation: Any) -> tuple[Callable[[], Any], int, int]:
    """(a function that builds a fresh model, vocabulary, context): the GPT for token shards (with the fused
    tanh-GELU kernel, notebook 09), a ViT of 2 x 2 patches for images."""
    if settings.model == "vit":
        channels, size = dataset.images.shape[1], dataset.images.shape[-1]
        patches = (size // 2) ** 2 + 1  # one token per 2 x 2 patch, plus the class token

        def build_vit() -> torch.nn.Module:
            return small_vit(size, 2, channels, 10, settings.layers, settings.width, settings.heads)

        return build_vit, 1, patches
    vocab, context = int(dataset.index["vocab_size"]), dataset.block
    if validation is not None and (validation.block, int(validation.index["vocab_size"])) != (context, vocab):
        found = f"block {validation.block} and vocabulary {validation.index['vocab_size']}"
        raise Stop(EXIT_BAD_INPUT, f"validation shards have {found}, training shards {context} and {vocab}")

    def build_gpt() -> torch.nn.Module:
        shape = (settings.layers, settings.width, settings.heads)
        model = small_gpt(vocab, context, *shape, activation="gelu_pytorch_tanh")
        model.config.use_cache = False  # key/value caches are for generation
        return model

    return build_gpt, vocab, context


def check_folders(run: Run) -> None:
    """Refuse, before any training, an output or checkpoint folder that cannot be written or has no room for one
    checkpoint (estimated as the fp32 parameters plus AdamW's two moments, plus 10%)."""
    problem = None
    if run.rank == 0:
        needed = int(1.1 * 3 * 4 * sum(p.numel() for p in run.model.parameters()))  # numel: global under FSDP
        for folder in (run.output, run.checkpoints):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_bytes(b"0")
                probe.unlink()
            except OSError as error:
                problem = f"{folder} is not writable ({error.strerror or error}): choose another folder"
                break
        if problem is None and (free := shutil.disk_usage(run.checkpoints).free) < needed:
            problem = (
                f"{run.checkpoints} has {free / 1e6:,.1f} MB free, one checkpoint needs about "
                f"{needed / 1e6:,.1f} MB: free space or choose another --checkpoint-dir"
            )
    if problem := broadcast(problem, run.world):
        raise Stop(EXIT_BAD_INPUT, problem)


# ---------------------------------------------------------------------------------------------------- checkpoints


def step_folder(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:07d}"


def checkpoint_problem(folder: Path, hashes_of: Callable[[str], bool] = lambda name: False) -> str | None:
    """Why `folder` is not a complete checkpoint (None when it is): `run.json` missing or unreadable, a listed file
    missing or of the wrong size, or, for the files `hashes_of(name)` selects, a SHA-256 that does not match."""
    try:
        manifest = json.loads((folder / "run.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError):
        return "no readable run.json (an incomplete or foreign folder)"
    for name, expected in files.items():
        path = folder / name
        size = path.stat().st_size if path.exists() else -1
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, run.json says {expected['bytes']} (truncated)"
        if hashes_of(name) and sha256_file(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in run.json (corrupt)"
    return None


def checkpoint_steps(checkpoints: Path) -> list[int]:
    """Steps of the published checkpoint folders, newest first."""
    steps = []
    for path in checkpoints.glob("step-*"):
        if path.is_dir() and path.name[5:].isdigit():
            steps.append(int(path.name[5:]))
    return sorted(steps, reverse=True)


def set_aside(folder: Path, reason: str) -> None:
    """Move a checkpoint that cannot be used to `set-aside/` (never delete it: it may be the only copy of
    something), and say why."""
    target = folder.parent / "set-aside" / folder.name
    target.parent.mkdir(exist_ok=True)
    while target.exists():
        target = target.with_name(target.name + "+")
    folder.rename(target)
    print(f"warning: {folder.name} {reason}; moved to {target}", file=sys.stderr, flush=True)


def owned_files(name: str, rank: int) -> bool:
    """Whether `rank` reads (and so verifies) checkpoint file `name`: its RNG state and, under FSDP, its shard;
    rank 0 also the gathered state and the sharded metadata."""
    if name.startswith("rng-rank"):
        return name == f"rng-rank{rank}.pt"
    if name.startswith("sharded/__"):
        return name.startswith(f"sharded/__{rank}_")
    return rank == 0


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: recorded -> current' for every run-defining setting that differs."""
    return [f"{k} {recorded.get(k)!r} -> {value!r}" for k, value in current.items() if recorded.get(k) != value]


def restore(run: Run) -> None:
    """Resume from the newest complete, uncorrupted checkpoint of this run; refuse one of another run (Stop(2)
    naming each difference). Interrupted saves (`*.partial`) are removed, corrupt checkpoints set aside."""
    if run.rank == 0:
        for partial in run.checkpoints.glob("step-*.partial"):
            shutil.rmtree(partial)
            print(f"warning: removed {partial.name}: a save that did not finish", file=sys.stderr, flush=True)
    candidates = broadcast(checkpoint_steps(run.checkpoints) if run.rank == 0 else None, run.world)
    for step in candidates:
        folder = step_folder(run.checkpoints, step)
        manifest, problem = None, checkpoint_problem(folder) if run.rank == 0 else None
        if run.rank == 0 and problem is None:
            manifest = json.loads((folder / "run.json").read_text())
            if differences := identity_differences(manifest["identity"], run.identity):
                problem = "refuse: " + "; ".join(differences)
        problem = broadcast(problem, run.world)
        if problem and problem.startswith("refuse: "):
            raise Stop(
                EXIT_BAD_INPUT,
                f"{folder} is a checkpoint of another run ({problem[8:]}). Resume with the "
                f"settings it was written with, or start a new run with another "
                f"--checkpoint-dir. May change on resume: {RESUMABLE_CHANGES}",
            )
        if problem is None:  # every rank verifies the files it will read
            mine = checkpoint_problem(folder, lambda name: owned_files(name, run.rank))
            problem = next((p for p in gather(mine, run.world) if p), None)
        if problem:
            if run.rank == 0:
                set_aside(folder, problem)
            continue
        load_checkpoint(run, folder, broadcast(manifest, run.world))
        return


def load_checkpoint(run: Run, folder: Path, manifest: dict[str, Any]) -> None:
    """Load model, optimizer, schedule, data position and this rank's random generators from `folder`: the gathered
    state is read by rank 0 alone and broadcast; FSDP shards are read by the rank that owns them."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    if manifest["layout"] == "sharded":
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = get_state_dict(run.model, run.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=folder / "sharded")
        set_state_dict(run.model, run.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True) if run.rank == 0 else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=run.world > 1)
        # model and optimizer separately: set_state_dict would take an empty model dict (ranks > 0 receive the
        # broadcast) as "optimizer only" and skip the model's broadcast
        set_model_state_dict(run.model, state.get("model", {}), options=options)
        set_optimizer_state_dict(run.model, run.optimizer, state.get("optimizer", {}), options=options)
    run.scheduler.load_state_dict(manifest["scheduler"])
    run.sampler.resume(manifest["epoch"], manifest["samples_done"])
    set_rng_state(torch.load(folder / f"rng-rank{run.rank}.pt", map_location="cpu", weights_only=True))
    run.step = run.resumed_from = run.last_saved = manifest["step"]
    if run.rank == 0:
        current = dataclasses.asdict(run.settings)
        changes = [f"{k} {v!r} -> {current[k]!r}" for k, v in manifest["settings"].items() if current.get(k) != v]
        if changes:
            print(f"note: resuming with changed settings (allowed): {', '.join(changes)}", flush=True)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(run: Run) -> Path:
    """Write the checkpoint for `run.step` (every rank takes part): files into `step-NNNNNNN.partial/`, then
    `run.json` with each file's size and hash, then the rename that publishes it, then rotation."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    final = step_folder(run.checkpoints, run.step)
    partial = final.with_name(final.name + ".partial")
    if run.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    if run.world > 1:
        dist.barrier()
    sharded = run.settings.strategy == "fsdp" and run.world > 1
    if sharded:
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = get_state_dict(run.model, run.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=partial / "sharded")
        mine = [name for p in (partial / "sharded").iterdir() if owned_files(name := f"sharded/{p.name}", run.rank)]
    else:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(run.model, run.optimizer, options=options)
        mine = []
        if run.rank == 0:
            torch.save({"model": model_state, "optimizer": optimizer_state}, partial / "state.pt")
            fsync_file(partial / "state.pt")
            mine = ["state.pt"]
    rng_file = partial / f"rng-rank{run.rank}.pt"
    torch.save(rng_state(), rng_file)
    fsync_file(rng_file)
    mine.append(rng_file.name)
    files = {name: {"bytes": (partial / name).stat().st_size, "sha256": sha256_file(partial / name)} for name in mine}
    files = {k: v for rank_files in gather(files, run.world) for k, v in rank_files.items()}
    notify_save(run, "files written")
    if run.rank == 0:
        manifest = {
            "step": run.step,
            "epoch": run.sampler.epoch,
            "samples_done": run.sampler.skip,
            "scheduler": run.scheduler.state_dict(),
            "layout": "sharded" if sharded else "full",
            "identity": run.identity,
            "settings": dataclasses.asdict(run.settings),
            "files": files,
        }
        (partial / "run.json").write_text(json.dumps(manifest, indent=1))
        fsync_file(partial / "run.json")
        notify_save(run, "manifest written")
        partial.rename(final)
        directory = os.open(run.checkpoints, os.O_RDONLY)  # make the rename itself durable
        os.fsync(directory), os.close(directory)
        notify_save(run, "published")
        rotate(run.checkpoints, run.step, run.settings.keep_checkpoints)
        notify_save(run, "rotated")
    if run.world > 1:
        dist.barrier()
    run.last_saved = run.step
    return final


def notify_save(run: Run, phase: str) -> None:
    for callback in run.callbacks:
        callback.on_save(run, phase)


def rotate(checkpoints: Path, current: int, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints up to `current` (which is one of them); delete older complete
    ones; set aside incomplete ones. Ordered by what is complete, so leftovers of a crashed run can never push the
    checkpoint just written out."""
    complete = []
    for step in checkpoint_steps(checkpoints):
        folder = step_folder(checkpoints, step)
        if problem := checkpoint_problem(folder):
            set_aside(folder, problem)
        elif step <= current:
            complete.append(folder)
    for folder in complete[keep:]:
        shutil.rmtree(folder)


def rng_state() -> dict[str, Any]:
    """Every random generator's state, in types `torch.load(weights_only=True)` accepts (numpy's key array as a
    list), so checkpoints never need unpickling of arbitrary objects."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"]), random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- measures


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: FSDP2's parameters are sharded DTensors."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _local_bytes(tensor: torch.Tensor | None) -> int:
    if tensor is None:
        return 0
    return _local(tensor).numel() * _local(tensor).element_size()


def local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (its shard under FSDP, everything under
    DDP): the quantities ZeRO divides, measured rather than predicted."""
    parameters = list(model.parameters())
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {
        "parameters": sum(_local_bytes(p) for p in parameters),
        "gradients": sum(_local_bytes(p.grad) for p in parameters),
        "optimizer": sum(_local_bytes(t) for t in states if t.dim() > 0),
    }


def as_float(value: torch.Tensor) -> float:
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def parameters_finite(run: Run) -> bool:
    """Whether every parameter of every rank is finite (checked before a checkpoint is written)."""
    local = all(bool(torch.isfinite(_local(p)).all()) for p in run.model.parameters())
    flag = torch.tensor(float(local), device=run.device)
    if run.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


# ---------------------------------------------------------------------------------------------------- the loop


class Stopper:
    """Remembers a SIGTERM (SageMaker sends one before stopping a spot instance) so the loop can checkpoint; a
    context manager that puts the previous handler back."""

    def __enter__(self) -> Stopper:
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def train_step(run: Run, stopper: Stopper) -> tuple[float, float, float, bool]:
    """One optimizer step: `--grad-accum` micro-steps, the gradient norm (clipped with `--clip`), and the update,
    unless the loss or the norm is not finite. Returns (loss averaged over ranks, gradient norm, the learning rate
    this step used, whether any rank asked to stop); the stop flag travels in the loss's all-reduce."""
    s, model = run.settings, run.model
    total = torch.zeros((), device=run.device)
    for micro in range(s.grad_accum):
        run.beat("reading data")
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(run.batches).items()}
        run.beat("computing")
        last_micro = micro == s.grad_accum - 1
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync, torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
            loss = run.forward(**batch).loss / s.grad_accum
            loss.backward()
        total += loss.detach().float()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(gradients)
    if s.clip:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), s.clip, norm)
    first = run.memory is None
    if first:  # parameters and gradients exist now, the optimizer's state after its first step: measure them
        run.memory = local_state_bytes(model, run.optimizer)
    stop_requested = stopper.requested  # read late, so a SIGTERM during this step's compute stops after it
    if run.world > 1:  # mean loss over ranks (gloo has no AVG: SUM / world), and whether any rank got SIGTERM
        packed = torch.stack([total, torch.tensor(float(stop_requested), device=run.device)])
        dist.all_reduce(packed)
        total, stop_requested = packed[0] / run.world, bool(packed[1] > 0)
    loss_value, norm_value, lr = float(total), as_float(norm), run.optimizer.param_groups[0]["lr"]
    finite = np.isfinite(loss_value) and np.isfinite(norm_value)
    if finite:
        run.optimizer.step()
    if first:
        run.memory["optimizer"] = local_state_bytes(model, run.optimizer)["optimizer"]
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    run.beat("reporting")
    if not finite:
        guard_non_finite(run, loss_value, norm_value)
    return loss_value, norm_value, lr, stop_requested


def guard_non_finite(run: Run, loss: float, norm: float) -> None:
    """A step whose loss or gradient norm is NaN or infinite was not applied. Skip it while fewer than
    `--max-bad-steps` were skipped, else stop (exit 4) without saving: the last checkpoint stays the last good state."""
    run.bad_steps += 1
    what = f"step {run.step}: loss {loss:g}, gradient norm {norm:g}"
    if run.bad_steps <= run.settings.max_bad_steps:
        if run.rank == 0:
            print(
                f"warning: {what} (not finite): update skipped ({run.bad_steps} of --max-bad-steps "
                f"{run.settings.max_bad_steps})",
                file=sys.stderr,
                flush=True,
            )
        return
    last = checkpoint_steps(run.checkpoints)
    kept = f"the last checkpoint, {step_folder(run.checkpoints, last[0]).name}, is intact" if last else "none was saved"
    raise Stop(
        EXIT_NON_FINITE,
        f"{what}: not finite, so training stopped and this state was not saved; {kept}. "
        "Lower --lr, keep --clip on, use --precision fp32, or let a few bad steps pass "
        "with --max-bad-steps N",
    )


def evaluate(run: Run) -> tuple[float, int]:
    """Mean token loss on the held-out blocks: the same first blocks every time (up to --eval-batches batches per
    rank, split evenly so every rank runs the same number of forward passes, as FSDP needs); returns (loss, tokens)."""
    s, blocks = run.settings, run.validation
    count = min(len(blocks), s.eval_batches * s.batch_size * run.world) // run.world * run.world
    mine = list(range(run.rank, count, run.world))
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)
    run.model.eval()
    with torch.no_grad(), torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
        for start in range(0, len(mine), s.batch_size):
            items = [blocks[i] for i in mine[start : start + s.batch_size]]
            batch = {k: v.to(run.device) for k, v in run.collate(items).items()}
            sums += torch.tensor([float(run.model(**batch).loss) * len(items), len(items)], device=run.device)
    run.model.train()
    if run.world > 1:
        dist.all_reduce(sums)
    per_item = run.identity["context"] - 1 if s.model == "gpt" else 1  # predicted tokens per block (or images)
    return float(sums[0] / sums[1]), int(sums[1]) * per_item


def log(record: dict[str, float | int], output: Path) -> None:
    """One metrics record: JSON into metrics.jsonl, the `key=value;` line on stdout (format: utils.train_settings)."""
    with open(output / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(metric_line(record), flush=True)


def report(run: Run, loss: float, norm: float, lr: float, window: dict[str, float]) -> None:
    """Log every --log-every steps (rank 0) and the validation loss every --eval-every steps and at the end."""
    s, done = run.settings, run.step
    window["tokens"] += run.tokens_per_step
    if done % s.log_every == 0 or done == s.steps:
        seconds = time.perf_counter() - window["start"]
        rate = window["tokens"] / seconds
        if run.rank == 0:
            log(
                {
                    "step": done,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "tokens_per_s": rate,
                    "mfu": rate * run.flops_per_token / (run.peak_flops * run.world),
                },
                run.output,
            )
        window["start"], window["tokens"] = time.perf_counter(), 0
    if run.validation is not None and ((s.eval_every and done % s.eval_every == 0) or done == s.steps):
        run.beat("evaluating")
        val_loss, tokens = evaluate(run)
        if run.rank == 0:
            log({"step": done, "val_loss": val_loss, "val_tokens": tokens}, run.output)
        window["start"] = time.perf_counter()  # the evaluation's time is not training throughput


def train(settings: TrainSettings, callbacks: Sequence[Callbacks] = ()) -> dict[str, Any]:
    """Run (or resume) the training run `settings` describes; returns a summary. Every rank calls this."""
    if None in (settings.data, settings.output, settings.checkpoint_dir):
        settings = resolve_paths(settings, dict(os.environ))
    with Stopper() as stopper:
        run = build(settings, callbacks)
        try:
            if settings.preflight or settings.preflight_gflops:
                print(f"rank {run.rank} pre-flight passed: " + "; ".join(preflight(run)), flush=True)
            restore(run)
            announce(run)
            loop(run, stopper)
            finish(run)
        except RuntimeError as error:
            if run.world > 1 and is_collective_failure(error):
                raise Stop(EXIT_TIMEOUT, stalled_ranks(run, error)) from None
            raise
    return {"rank": run.rank, "world": run.world, "steps": run.step, "resumed_from": run.resumed_from}


def loop(run: Run, stopper: Stopper) -> None:
    """Train from `run.step` to `--steps`: step, report, callbacks, checkpoint when due, stop on SIGTERM."""
    s = run.settings
    progress = tqdm(total=s.steps, initial=run.step, disable=not interactive(run), desc="training")
    window = {"start": time.perf_counter(), "tokens": 0}
    while run.step < s.steps:
        loss, norm, lr, stopping = train_step(run, stopper)
        progress.update(1)
        report(run, loss, norm, lr, window)
        for callback in run.callbacks:
            callback.on_step_end(run)
        if stopping or (s.checkpoint_every and run.step % s.checkpoint_every == 0):
            checkpoint(run)
        if stopping:
            if run.rank == 0:
                print(f"SIGTERM: checkpoint saved at step {run.step}; rerun the same command to resume", flush=True)
            raise Stop(EXIT_SIGTERM, "")
    progress.close()


def checkpoint(run: Run) -> None:
    """Save, unless a parameter is not finite (then stop: a poisoned state is never written)."""
    run.beat("checkpointing")
    if not parameters_finite(run):
        raise Stop(
            EXIT_NON_FINITE,
            f"step {run.step}: a parameter is not finite; the checkpoint was not written. Lower --lr or keep --clip on",
        )
    save_checkpoint(run)


def announce(run: Run) -> None:
    if run.rank == 0:
        resumed = f"resumed from step {run.resumed_from}" if run.resumed_from else "fresh start"
        s = run.settings
        print(f"training: {run.world} rank(s) on {run.device}, {s.strategy}, {run.precision_note}; {resumed}")
        print(run.data_note)
        print(
            f"MFU divides model FLOPs ({run.flops_per_token:.3g} per token: utils.sizing.training_flops_per_token, "
            f"output projection included) by {run.peak_flops / 1e9:,.0f} GFLOP/s per rank ({run.peak_note})",
            flush=True,
        )
        if run.hardware_flops_per_token > run.flops_per_token:
            factor = run.hardware_flops_per_token / run.flops_per_token
            print(f"activation checkpointing recomputes the blocks: hardware FLOPs utilisation <= {factor:.2f} x MFU")
        if s.warmup > s.steps:
            print(f"note: --warmup {s.warmup} is longer than --steps {s.steps}: the learning rate stays below its peak")
        if run.validation is None:
            print("no validation data (--validation-data, SM_CHANNEL_VALIDATION): val_loss is not logged", flush=True)


def interactive(run: Run) -> bool:
    return run.rank == 0 and sys.stderr.isatty() and os.environ.get("TQDM_DISABLE") != "1"


def finish(run: Run) -> None:
    """The last checkpoint (unless it exists), memory.json and the model in transformers' format."""
    if run.last_saved != run.step:
        checkpoint(run)
    if run.memory is not None:
        memories = gather(run.memory, run.world)
        if run.rank == 0:
            (run.output / "memory.json").write_text(json.dumps(memories, indent=1))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(run.model, options=options)  # collective: every rank takes part
    if run.rank == 0:
        final = run.build_model()
        final.load_state_dict(model_state)
        final.save_pretrained(run.output / "model")
    if run.world > 1:
        dist.barrier()


def is_collective_failure(error: RuntimeError) -> bool:
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        marker in text for marker in ("timed out", "timeout", "connection closed by peer", "connection reset")
    )


def stalled_ranks(run: Run, error: RuntimeError) -> str:
    """Name the ranks behind this one, from the progress every rank reports to the store (`Run.beat`)."""
    with contextlib.suppress(Exception):
        run.store.set_timeout(datetime.timedelta(seconds=5))

    def where(rank: int) -> tuple[int, int] | None:
        try:
            return tuple(json.loads(run.store.get(f"progress/{rank}")))
        except Exception:  # the store does not answer: its host (rank 0, or torchrun's agent) is the stalled one
            return None

    def said(position: tuple[int, int] | None) -> str:
        return "no answer" if position is None else f"{position[0]} steps done, then {PHASES[position[1]]}"

    mine = (run.step, PHASES.index("checkpointing") + 1)
    others = {rank: where(rank) for rank in range(run.world) if rank != run.rank}
    behind = [f"rank {r} ({said(p)})" for r, p in others.items() if p is None or p < mine]
    return (
        f"a collective failed or timed out (--collective-timeout {run.settings.collective_timeout:g} s) after "
        f"{run.step} steps. Behind this rank: {', '.join(behind) or 'none (a rank died?)'}: stopped, stuck "
        f"reading data, or on a dead host. Exiting so the launcher (torchrun --max-restarts, SageMaker's retry) can "
        f"restart from the last checkpoint. ({str(error).splitlines()[0][:160]})"
    )


def main(argv: list[str] | None = None, callbacks: Sequence[Callbacks] = ()) -> int:
    """Parse the settings, train, and turn every refusal into its exit code and one clear message on stderr."""
    try:
        settings = parse_settings(argv)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    try:
        train(settings, callbacks)
    except Stop as stop:
        if stop.args[0]:
            prefix = f"rank {os.environ.get('RANK', '0')}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            print(f"{prefix}error: {stop}", file=sys.stderr, flush=True)
        if stop.code == EXIT_TIMEOUT:  # do not wait on a stalled peer in the process group's destructor
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(stop.code)
        return stop.code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run_and_exit(argv: list[str] | None = None, callbacks: Sequence[Callbacks] = ()) -> None:
    """The program's entry point: run `main` and end the process with its exit code. A rank of a multi-process job
    (WORLD_SIZE > 1) skips the interpreter's teardown: with torch 2.13 on gloo a finished rank sometimes aborts
    there ("terminate called without an active exception", SIGABRT; seen in about 1 run in 10 of the course's
    two-rank tests, after every step, checkpoint and line of output was complete), and torchrun or SageMaker would
    count the job as failed. Checkpoints are written and renamed synchronously before `main` returns, so nothing
    is lost by not tearing down."""
    code = main(argv, callbacks)
    sys.stdout.flush(), sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run_and_exit()
