"""The training program with one injected fault, for the fault tests: `python tests/fault_injection.py FAULT <flags>`
(or the same script under torchrun). FAULT is one of

    crash:STEP[:RANK]         the rank (default: the last) dies with exit code 1 at the end of STEP, once per output
    kill-in-save:PHASE:STEP   SIGKILL itself right after PHASE of saving STEP's checkpoint (utils.train.SAVE_PHASES)
    nan-once:STEP             the forward pass after STEP returns NaN, once (a transient fault: one bad batch)
    poison:STEP               a weight becomes NaN at the end of STEP (a lasting fault: the state itself is bad)
    stall:STEP:RANK           the rank stops itself (SIGSTOP) at the end of STEP, as a hung host would
    kill-loop                 `kill -9` at every save phase in turn, each time restarting (see `kill_loop`)

"Once" is remembered by a marker file in the output folder, so a restarted job runs clean.
"""

import os
import signal
import sys
from pathlib import Path

import torch

from utils import train


class Fault(train.Callbacks):
    def __init__(self, spec: str) -> None:
        self.kind, *arguments = spec.split(":")
        self.arguments = arguments
        self.spec = spec

    def _once(self, run: train.Run) -> bool:
        marker = run.output / f".fault-{self.spec.replace(':', '-')}-{run.rank}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return True

    def on_step_end(self, run: train.Run) -> None:
        if self.kind == "kill-in-save":
            return
        step = int(self.arguments[0])
        rank = int(self.arguments[1]) if len(self.arguments) > 1 else run.world - 1
        if run.step != step or run.rank != rank:
            return
        if self.kind == "crash" and self._once(run):
            sys.stdout.flush()
            os._exit(1)  # no cleanup, no checkpoint: a crashed process
        if self.kind == "stall" and self._once(run):
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.kind == "poison":
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] = float("nan")
        if self.kind == "nan-once" and self._once(run):
            model = run.model.module if hasattr(run.model, "module") else run.model
            handle = None

            def nan_output(module, inputs, output):
                handle.remove()
                return output * float("nan")

            handle = model.transformer.ln_f.register_forward_hook(nan_output)

    def on_save(self, run: train.Run, phase: str) -> None:
        here = self.kind == "kill-in-save" and phase == self.arguments[0] and run.step == int(self.arguments[1])
        if here and self._once(run):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def kill_loop(flags: list[str], save_steps: list[int]) -> None:
    """Run the program once per save phase, each run killed with SIGKILL right after that phase of saving the next
    step in `save_steps`, restarting every time; then once to the end. Each run is a forked process (torch is
    imported once, here, before any torch work, so forking is safe). Prints, per run, how it ended and the
    checkpoint folder's entries, for the test to check."""
    settings = train.parse_settings(flags)
    for phase, step in zip(train.SAVE_PHASES, save_steps, strict=True):
        child = os.fork()
        if child == 0:
            code = train.main(flags, callbacks=[Fault(f"kill-in-save:{phase}:{step}")])
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(child, 0)
        entries = sorted(p.name for p in Path(settings.checkpoint_dir).iterdir())
        print(
            f"killed in {phase!r} at step {step}: signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}; "
            f"left {entries}",
            flush=True,
        )
    child = os.fork()
    if child == 0:
        code = train.main(flags)
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(child, 0)
    print(
        f"final run: exit {os.waitstatus_to_exitcode(status)}; left "
        f"{sorted(p.name for p in Path(settings.checkpoint_dir).iterdir())}",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1].startswith("kill-loop"):
        kill_loop(sys.argv[2:], [int(step) for step in sys.argv[1].split(":")[1:]])
        raise SystemExit(0)
    fault = Fault(sys.argv[1])
    assert fault.kind in ("crash", "kill-in-save", "nan-once", "poison", "stall"), fault.kind
    assert fault.kind != "kill-in-save" or fault.arguments[0] in train.SAVE_PHASES, fault.arguments
    train.run_and_exit(sys.argv[2:], callbacks=[fault])
