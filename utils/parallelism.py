"""Tensor and pipeline parallelism on two CPU ranks, checked against one process: the demos of notebook 05.

    torchrun --standalone --nproc-per-node 2 -m utils.parallelism tensor
    torchrun --standalone --nproc-per-node 2 -m utils.parallelism pipeline

Defined for notebook 05 (book chapter 5). Tensor parallelism splits each weight matrix across ranks
(`torch.distributed.tensor.parallel`: the first linear layer by output columns, the second by input rows, so one
all-reduce per MLP, as in Megatron-LM, Shoeybi et al. 2019); pipeline parallelism splits the layers into stages and
streams micro-batches through them (`torch.distributed.pipelining`, GPipe schedule, Huang et al. 2019). Rank 0
prints a JSON list with every rank's result. Needs torch only; runs on gloo (CPU) or NCCL.

`gpipe_schedule` lays out which stage works on which micro-batch in each time slot of a GPipe step, so the notebook
can draw the pipeline's idle "bubble" and count it (`bubble_fraction`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def mlp(width: int, hidden: int) -> torch.nn.Sequential:
    """A transformer feed-forward block: Linear(width -> hidden), GELU, Linear(hidden -> width)."""
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width))


class Stack(torch.nn.Module):
    """`depth` residual MLP blocks: a small model to cut into pipeline stages."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(mlp(width, 4 * width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def tensor_parallel(width: int = 64, batch: int = 8) -> dict[str, object]:
    """Shard an MLP's two matrices across the ranks; compare output and gradients with the unsharded MLP."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    sharded, reference = mlp(width, 4 * width), mlp(width, 4 * width)
    reference.load_state_dict(sharded.state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    parallelize_module(sharded, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    x = torch.randn(batch, width)
    out, expected = sharded(x), reference(x)
    out.square().mean().backward(), expected.square().mean().backward()
    local, local_grad = sharded[0].weight.to_local(), sharded[0].weight.grad.to_local()
    rows = slice(dist.get_rank() * local.shape[0], (dist.get_rank() + 1) * local.shape[0])  # this rank's columns
    return {
        "output_max_difference": (out - expected).abs().max().item(),
        "grad_max_difference": (local_grad - reference[0].weight.grad[rows]).abs().max().item(),
        "local_weight_shape": list(local.shape),
        "full_weight_shape": list(reference[0].weight.shape),
    }


def pipeline_parallel(depth: int = 4, width: int = 32, batch: int = 8, microbatches: int = 4) -> dict[str, object]:
    """Cut a `depth`-block model in two stages, run one GPipe step over micro-batches, compare its loss with the
    whole model's on the same batch."""
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline

    torch.manual_seed(0)
    model = Stack(depth, width)
    x, target = torch.randn(batch, width), torch.zeros(batch, width)
    split = {f"blocks.{depth // 2}": SplitPoint.BEGINNING}
    pipe = pipeline(model, mb_args=(x[: batch // microbatches],), split_spec=split)
    rank = dist.get_rank()
    stage = pipe.build_stage(rank, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=microbatches, loss_fn=lambda out, y: (out - y).square().mean())
    parameters = sum(p.numel() for p in stage.submod.parameters())
    if rank == 0:
        schedule.step(x)
        return {"stage": 0, "stage_parameters": parameters}
    losses: list[torch.Tensor] = []
    schedule.step(target=target, losses=losses)
    whole = (model(x) - target).square().mean().item()
    return {
        "stage": 1,
        "stage_parameters": parameters,
        "pipeline_loss": torch.stack(losses).mean().item(),
        "whole_model_loss": whole,
    }


def gpipe_schedule(stages: int, microbatches: int) -> list[tuple[int, str, int, int]]:
    """One GPipe training step as (stage, "forward" or "backward", micro-batch, time slot) tuples, each piece of
    work taking one slot: micro-batch m runs forward on stage s in slot s + m; once every forward is done, the
    backward passes run from the last stage to the first, in micro-batch order (Huang et al., 2019, figure 2).
    Every stage is busy 2 x `microbatches` of the 2 (microbatches + stages - 1) slots, so the idle share, the
    bubble, is (stages - 1) / (microbatches + stages - 1) (`bubble_fraction`)."""
    if stages < 1 or microbatches < 1:
        raise ValueError("need at least one stage and one micro-batch")
    fill = microbatches + stages - 1  # slots until the last forward ends
    work = [(s, "forward", m, s + m) for s in range(stages) for m in range(microbatches)]
    work += [(s, "backward", m, fill + (stages - 1 - s) + m) for s in range(stages) for m in range(microbatches)]
    return sorted(work, key=lambda piece: (piece[3], piece[0]))


def bubble_fraction(schedule: list[tuple[int, str, int, int]]) -> float:
    """Share of stage-slots in which a stage is idle, counted from a schedule such as `gpipe_schedule`'s."""
    stages, slots = {piece[0] for piece in schedule}, max(piece[3] for piece in schedule) + 1
    return 1 - len(schedule) / (len(stages) * slots)


def run_demo(demo: str, processes: int = 2) -> list[dict[str, object]]:
    """Launch `demo` ("tensor" or "pipeline") under torchrun from the repository root; every rank's result."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "utils.parallelism",
        demo,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{demo} demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", choices=["tensor", "pipeline"])
    args = parser.parse_args(argv)
    if "WORLD_SIZE" not in os.environ:
        parser.error("run under torchrun: torchrun --standalone --nproc-per-node 2 -m utils.parallelism " + args.demo)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    result = {"rank": dist.get_rank(), "demo": args.demo}
    result |= tensor_parallel() if args.demo == "tensor" else pipeline_parallel()
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)  # one line from rank 0: ranks writing at once would interleave
    if dist.get_rank() == 0:
        print(json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush(), sys.stderr.flush()
    # Skip interpreter teardown: with torch 2.13 on gloo, a DeviceMesh demo aborted at exit ("terminate called
    # without an active exception") in about 1 run in 10, after its work and output were complete.
    os._exit(code)
