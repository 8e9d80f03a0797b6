"""The course's training program: one file that runs on a laptop, under torchrun, and as a SageMaker entry point.

    python -m utils.train --data runs/interactive/token_shards --steps 200            # one process
    torchrun --nproc-per-node 2 -m utils.train --data ... --strategy ddp              # two ranks (gloo on CPU)
    torchrun --nproc-per-node 2 -m utils.train --data ... --strategy fsdp             # FSDP2 fully_shard

Defined for notebooks 05 and 09 (book chapters 5 and 9); notebook 08 runs it on SageMaker. Settings come from flags,
and from SageMaker's contract when it is present (hyperparameters in SM_HPS or hyperparameters.json, data in
SM_CHANNEL_TRAINING, the model in SM_MODEL_DIR, checkpoints in /opt/ml/checkpoints). It trains the GPT-2-style model
of `utils.models.small_gpt` on packed token shards (`utils.loaders`), logs JSON lines and `key=value;` text that
SageMaker metric regexes can scrape, checkpoints atomically every N steps and on SIGTERM, and resumes exactly.
Depends on `utils.loaders`, `utils.models`, `utils.sizing` and `utils.machine`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from utils.loaders import (
    PackedBlocks,
    ResumableDistributedSampler,
    causal_lm_batch,
    image_batch,
    read_image_arrays,
    sha256_file,
    training_data_dir,
)
from utils.machine import has_fast_cpu_bf16, measure_matmul_throughput
from utils.models import small_gpt, small_vit
from utils.sizing import TransformerShape, training_flops_per_token

SAGEMAKER_HYPERPARAMETERS = Path("/opt/ml/input/config/hyperparameters.json")
SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")  # synced to S3 by SageMaker when checkpointing is configured


# ---------------------------------------------------------------------------------------------------- settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.train", description=__doc__.splitlines()[0])

    def add(name: str, **kwargs: Any) -> None:  # accept --grad-accum and SageMaker's --grad_accum alike
        p.add_argument(f"--{name}", f"--{name.replace('-', '_')}", **kwargs)

    add("data", default=None, help="folder of token shards (default: $SM_CHANNEL_TRAINING)")
    add("output", default=None, help="metrics.jsonl and the final model (default: $SM_MODEL_DIR, else runs/train)")
    add("checkpoint-dir", default=None, help="default: /opt/ml/checkpoints on SageMaker, else <output>/checkpoints")
    add("model", choices=["gpt", "vit"], default="gpt", help="gpt: token shards; vit: images.npz (digits)")
    add("layers", type=int, default=4, help="transformer blocks (GPT-2 small: 12)")
    add("width", type=int, default=256, help="model width (GPT-2 small: 768)")
    add("heads", type=int, default=4, help="attention heads (GPT-2 small: 12)")
    add("batch-size", type=int, default=16, help="blocks per rank per micro-step")
    add("grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    add("steps", type=int, default=100, help="optimizer steps in the whole run")
    add("lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    add("warmup", type=int, default=10, help="linear warm-up steps before the cosine decay")
    add("min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of the peak")
    add("weight-decay", type=float, default=0.1, help="AdamW weight decay")
    add("clip", type=float, default=1.0, help="gradient norm clipping (0: off)")
    add("strategy", choices=["none", "ddp", "fsdp"], default="none", help="how ranks share the work")
    add("precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPUs, fp32 on CPUs")
    switch = {"nargs": "?", "const": True, "default": False, "type": switch_value, "metavar": "BOOL"}
    add("activation-checkpointing", **switch, help="recompute each block's activations in backward")
    add("compile", **switch, help="torch.compile the model")
    add("log-every", type=int, default=10, help="steps between metric lines")
    add("checkpoint-every", type=int, default=50, help="steps between checkpoints (0: only on SIGTERM and at the end)")
    add("keep-checkpoints", type=int, default=2, help="checkpoints kept on disk")
    add("peak-flops", type=float, default=0.0, help="device peak FLOP/s for MFU (0: measure a matmul at start)")
    add(
        "preflight-gflops",
        type=float,
        default=0.0,
        help="before training, check devices, a tiny all-reduce and that a matmul reaches this many GFLOP/s per rank",
    )
    add("preflight-tolerance", type=float, default=0.5, help="pre-flight passes above this fraction of the expectation")
    add("seed", type=int, default=0, help="seed for the model, the data order and every RNG")
    add("fail-at-step", type=int, default=0, help="testing aid: rank 1 (or 0 alone) dies once at this step")
    return p


def switch_value(text: str) -> bool:
    """An on/off flag's value. `--compile` alone means on; SageMaker's launchers pass every hyperparameter with a
    value (`--compile True` from the training toolkit, `--compile true` from ModelTrainer's drivers), so both
    spellings of both values are accepted."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def sagemaker_arguments(env: dict[str, str]) -> list[str]:
    """SageMaker's hyperparameters as command-line flags: from SM_HPS (a JSON object the training toolkit sets) or
    /opt/ml/input/config/hyperparameters.json (values JSON-encoded as strings). Flags given explicitly win."""
    if "SM_HPS" in env:
        values = json.loads(env["SM_HPS"])
    elif SAGEMAKER_HYPERPARAMETERS.exists():
        values = {}
        for key, value in json.loads(SAGEMAKER_HYPERPARAMETERS.read_text()).items():
            with contextlib.suppress(json.JSONDecodeError, TypeError):
                value = json.loads(value)
            values[key] = value
    else:
        return []
    arguments = []
    for key, value in values.items():
        if value is True:
            arguments.append(f"--{key}")
        elif value is not False:
            arguments += [f"--{key}", str(value)]
    return arguments


def parse_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    """Flags over SageMaker hyperparameters over defaults; paths resolved from the SageMaker environment when set.
    Bad values fail here, before any work starts, with argparse's message."""
    env = dict(os.environ if env is None else env)
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    settings = p.parse_args(sagemaker_arguments(env) + argv)
    for name in ("layers", "width", "heads", "batch_size", "grad_accum", "steps", "log_every", "keep_checkpoints"):
        if getattr(settings, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(settings, name)}")
    if settings.width % settings.heads:
        p.error(f"--width ({settings.width}) must be a multiple of --heads ({settings.heads})")
    settings.data = settings.data or env.get("SM_CHANNEL_TRAINING")
    if not settings.data:
        p.error("no training data: pass --data or set SM_CHANNEL_TRAINING")
    if not Path(settings.data).is_dir():
        p.error(f"--data {settings.data} is not a folder; write shards with utils.loaders.write_token_shards")
    settings.output = Path(settings.output or env.get("SM_MODEL_DIR") or "runs/train")
    on_sagemaker = "SM_MODEL_DIR" in env or "SM_TRAINING_ENV" in env
    default_checkpoints = SAGEMAKER_CHECKPOINTS if on_sagemaker else settings.output / "checkpoints"
    settings.checkpoint_dir = Path(settings.checkpoint_dir or default_checkpoints)
    return settings


# ---------------------------------------------------------------------------------------------------- processes


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE set) joins the env:// rendezvous with NCCL on GPUs,
    gloo on CPUs; alone, returns (0, 1, device) without a process group."""
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend, init_method="env://")
        else:  # under torchrun: key the rendezvous by restart count, or a restarted rank reads the dead ranks'
            # addresses from torchrun's store (seen with torch 2.13 and gloo) and the restart hangs
            rank = int(os.environ["RANK"])
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=rank == 0 and not agent_store)  # fmt: skip
            dist.init_process_group(backend, store=dist.PrefixStore(f"restart-{restart}", store), rank=rank,
                                    world_size=world)  # fmt: skip
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def preflight(device: torch.device, world: int, expected_gflops: float, tolerance: float) -> list[str]:
    """Health checks every rank runs before training (notebook 08): the device is visible, a one-element all-reduce
    over all ranks returns the world size, and a 1024 x 1024 fp32 matmul reaches `tolerance` x `expected_gflops`.
    Returns one line per check; raises RuntimeError naming the failed check, so a bad host stops the job in
    seconds instead of slowing every rank for hours."""
    lines = []
    if device.type == "cuda" and torch.cuda.device_count() <= device.index:
        raise RuntimeError(f"pre-flight: {device} not visible ({torch.cuda.device_count()} GPUs); check the driver")
    lines.append(f"device {device} visible")
    if world > 1:
        ones = torch.ones(1, device=device)
        dist.all_reduce(ones)
        if int(ones.item()) != world:
            raise RuntimeError(f"pre-flight: all-reduce returned {ones.item()}, expected {world}: check the network")
        lines.append(f"all-reduce over {world} ranks correct")
    measured = measure_matmul_throughput(1024, torch.float32, device.type, min_run_time=0.2)["gflops"]
    if measured < tolerance * expected_gflops:
        raise RuntimeError(f"pre-flight: matmul at {measured:.0f} GFLOP/s, below {tolerance:.0%} of the expected "
                           f"{expected_gflops:.0f}: a throttled or shared device")  # fmt: skip
    lines.append(f"matmul {measured:.0f} GFLOP/s (expected >= {tolerance * expected_gflops:g})")
    return lines


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The autocast dtype and why. bf16 on CPUs without native bf16 units runs many times slower than fp32, so
    `auto` (and an explicit bf16 request on such a CPU, with a warning) fall back to fp32 there."""
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


# ---------------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(payload: dict[str, Any], folder: Path, step: int, keep: int) -> Path:
    """Write `step-NNNNNNN.pt` atomically: to a temporary file, fsync, rename; then a `.sha256` beside it; then
    delete all but the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    path.with_suffix(".sha256").write_text(sha256_file(path))
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink()
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def load_latest_checkpoint(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint whose hash matches and that loads; returns (payload or None, warnings about the
    newer ones that were skipped as truncated or corrupt)."""
    warnings = []
    for path in sorted(folder.glob("step-*.pt"), reverse=True):
        recorded = path.with_suffix(".sha256")
        if not recorded.exists() or recorded.read_text().strip() != sha256_file(path):
            warnings.append(f"{path.name} is truncated or corrupt (hash mismatch); using an older checkpoint")
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=True), warnings
        except Exception as error:  # a file that hashes right but does not load: skip it, say so
            warnings.append(f"{path.name} does not load ({error}); using an older checkpoint")
    return None, warnings


def rng_state() -> dict[str, Any]:
    """Every random generator's state, in types `torch.load(weights_only=True)` accepts (numpy's key array as a
    list), so checkpoints never need unpickling of arbitrary objects."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), position, has_gauss, cached],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"]), random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _local_bytes(tensor: torch.Tensor | None) -> int:
    if tensor is None:
        return 0
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 parameters are sharded DTensors
    return local.numel() * local.element_size()


def local_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (its shard under FSDP, everything under
    DDP): the quantities ZeRO divides, measured rather than predicted."""
    parameters = list(model.parameters())
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {"parameters": sum(_local_bytes(p) for p in parameters),
            "gradients": sum(_local_bytes(p.grad) for p in parameters),
            "optimizer": sum(_local_bytes(t) for t in states if t.dim() > 0)}  # fmt: skip


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass during one forward, counted once per storage:
    the activation memory of a training step, measured on any device (no CUDA memory statistics needed)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


# ---------------------------------------------------------------------------------------------------- training


def learning_rate(step: int, settings: argparse.Namespace) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio x peak at the last step."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(settings.steps - settings.warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine)


def batches(
    dataset: Any, sampler: ResumableDistributedSampler, batch_size: int, collate: Any
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever, epoch after epoch, from wherever the sampler was resumed; tracks its position (and, for
    augmented images, tells the dataset the epoch so each epoch draws new augmentations)."""
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(sampler.epoch)
        for batch in DataLoader(dataset, batch_size, sampler=sampler, collate_fn=collate, drop_last=True):
            sampler.skip += len(batch["labels"])  # position within the epoch, saved in checkpoints
            yield batch
        sampler.set_epoch(sampler.epoch + 1)


class Stopper:
    """Remembers a SIGTERM (SageMaker sends one before stopping a spot instance) so the loop can checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def log(record: dict[str, float], output: Path) -> None:
    """One metrics line: JSON into metrics.jsonl, `key=value;` text on stdout for SageMaker's metric regexes."""
    with open(output / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    text = "; ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
    print(text + ";", flush=True)


def train(settings: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the training run `settings` describes; returns a summary. Every rank calls this."""
    rank, world, device = setup_distributed()
    if settings.preflight_gflops:
        try:
            checks = preflight(device, world, settings.preflight_gflops, settings.preflight_tolerance)
        except RuntimeError as error:
            print(f"rank {rank}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        print(f"rank {rank} pre-flight passed: " + "; ".join(checks), flush=True)
    stopper = Stopper()
    dtype, precision_note = choose_precision(settings.precision, device)
    folder = training_data_dir(settings.data)
    if settings.model == "gpt":
        dataset, collate = PackedBlocks(folder), causal_lm_batch
        vocab, context = int(dataset.index["vocab_size"]), dataset.block

        def build() -> torch.nn.Module:
            return small_gpt(vocab, context, settings.layers, settings.width, settings.heads)
    else:
        dataset, collate = read_image_arrays(folder, seed=settings.seed), image_batch
        channels, size = dataset.images.shape[1], dataset.images.shape[-1]
        vocab, context = 1, (size // 2) ** 2 + 1  # one token per 2 x 2 patch, plus the class token

        def build() -> torch.nn.Module:
            return small_vit(size, 2, channels, 10, settings.layers, settings.width, settings.heads)

    torch.manual_seed(settings.seed)
    model = build().to(device)
    if settings.activation_checkpointing:
        model.activation_checkpointing_enable()
    model = wrap_model(model, settings.strategy, world, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, settings) / settings.lr)
    sampler = ResumableDistributedSampler(dataset, num_replicas=world, rank=rank, seed=settings.seed)
    start_step = 0
    checkpoint, warnings = load_latest_checkpoint(settings.checkpoint_dir)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if checkpoint is not None:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=world > 1 and settings.strategy == "fsdp")
        set_state_dict(model, optimizer, model_state_dict=checkpoint["model"], optim_state_dict=checkpoint["optimizer"],
                       options=options)  # fmt: skip
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"][rank])
        sampler.resume(checkpoint["epoch"], checkpoint["samples_done"])
        start_step = checkpoint["step"]
    settings.output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        resumed = f"resumed from step {start_step}" if checkpoint else "fresh start"
        print(f"training: {world} rank(s) on {device}, {settings.strategy}, {precision_note}; {resumed}", flush=True)
    forward = torch.compile(model) if settings.compile else model  # checkpoints keep using the uncompiled module
    shape = TransformerShape(vocab, settings.width, settings.layers, settings.heads, 4 * settings.width, context)
    flops_per_token = training_flops_per_token(shape, context)
    peak = settings.peak_flops or measure_matmul_throughput(2048, dtype, device.type)["gflops"] * 1e9
    data = batches(dataset, sampler, settings.batch_size, collate)
    tokens_per_step = settings.batch_size * settings.grad_accum * context * world
    interactive = rank == 0 and sys.stderr.isatty() and os.environ.get("TQDM_DISABLE") != "1"
    progress = tqdm(total=settings.steps, initial=start_step, disable=not interactive, desc="training")
    window_start, window_tokens, last_loss = time.perf_counter(), 0, float("nan")
    for step in range(start_step, settings.steps):
        if settings.fail_at_step == step + 1 and rank == min(1, world - 1):
            marker = settings.checkpoint_dir / f"failed-once-at-{step + 1}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os._exit(1)  # simulate a crashed rank: no cleanup, no checkpoint
        total = torch.zeros((), device=device)
        for micro in range(settings.grad_accum):
            batch = {k: v.to(device) for k, v in next(data).items()}
            last_micro = micro == settings.grad_accum - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = forward(**batch).loss / settings.grad_accum
                loss.backward()
            total += loss.detach().float()
        if settings.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
        if step == start_step:  # parameters, gradients and optimizer state all exist now: measure them
            memory = local_state_bytes(model, optimizer)
        optimizer.step(), scheduler.step()
        if step == start_step:
            memory["optimizer"] = local_state_bytes(model, optimizer)["optimizer"]
            memories = [None] * world
            if world > 1:
                dist.all_gather_object(memories, memory)
            else:
                memories = [memory]
            if rank == 0:
                (settings.output / "memory.json").write_text(json.dumps(memories, indent=1))
        optimizer.zero_grad(set_to_none=True)
        if world > 1:  # the logged loss is the mean over ranks (gloo has no AVG reduction, so SUM / world)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total = total / world
        last_loss = float(total)
        window_tokens += tokens_per_step
        progress.update(1)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            seconds = time.perf_counter() - window_start
            tokens_per_second = window_tokens / seconds
            mfu = tokens_per_second * flops_per_token / (peak * world)
            if rank == 0:
                log({"step": done, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                     "tokens_per_s": tokens_per_second, "mfu": mfu}, settings.output)  # fmt: skip
            window_start, window_tokens = time.perf_counter(), 0
        stopping = stopper.requested
        if world > 1:  # every rank must agree to stop, or the others would wait forever in the next all-reduce
            flag = torch.tensor(float(stopping), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = bool(flag)
        if (settings.checkpoint_every and done % settings.checkpoint_every == 0) or stopping or done == settings.steps:
            model_state, optimizer_state = get_state_dict(model, optimizer, options=full)
            states = [None] * world
            if world > 1:
                dist.all_gather_object(states, rng_state())
            else:
                states = [rng_state()]
            payload = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                       "rng": states, "epoch": sampler.epoch, "samples_done": sampler.skip, "step": done}  # fmt: skip
            if rank == 0:
                save_checkpoint(payload, settings.checkpoint_dir, done, settings.keep_checkpoints)
            if world > 1:
                dist.barrier()
        if stopping:
            if rank == 0:
                print(f"SIGTERM: checkpoint saved at step {done}; rerun the same command to resume", flush=True)
            progress.close()
            if world > 1:
                dist.destroy_process_group()
            sys.exit(128 + signal.SIGTERM)
    progress.close()
    model_state, _ = get_state_dict(model, optimizer, options=full)  # collective: every rank takes part
    if rank == 0:
        final = build()
        final.load_state_dict(model_state)
        final.save_pretrained(settings.output / "model")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"rank": rank, "world": world, "final_loss": last_loss, "steps": settings.steps, "resumed_from": start_step}


def launch(flags: list[str], processes: int = 1, torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run this program as a user would, `python -m utils.train` or `torchrun --nproc-per-node N -m utils.train`,
    from the repository root; returns the finished process (stdout, stderr, returncode)."""
    command = [sys.executable, "-m", "utils.train", *flags]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   *torchrun, "-m", "utils.train", *flags]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(os.cpu_count() // processes, 1)))}
    return subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)


def read_metrics(output: str | Path) -> list[dict[str, float]]:
    """The metric lines a run wrote to `<output>/metrics.jsonl`, later lines for a step replacing earlier ones
    (a resumed run logs again the steps after its checkpoint)."""
    rows = {}
    for line in (Path(output) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    train(parse_settings(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
