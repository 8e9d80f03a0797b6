"""Shrinking a model before deploying it, and measuring what each step costs and buys: ONNX export, dynamic int8
quantization, and distillation into a student with fewer layers.

Defined for notebook 12 (book chapter 12). Standard library plus torch, onnx/onnxscript (for the exporter),
onnxruntime, numpy and psutil. Works on any PyTorch module that maps (input_ids, attention_mask) to outputs, such
as the course's served classifier (serving/code/inference.py's SentenceClassifier).

- `export_onnx` uses the current exporter (`torch.onnx.export(dynamo=True)`, which traces with torch.export) and
  keeps batch and sequence length dynamic; `quantize_int8` is ONNX Runtime's dynamic quantization (weights stored
  as int8, activations quantized on the fly per batch: no calibration data needed). `torch.ao.quantization` is
  deprecated in PyTorch 2.x (torchao replaces it), which is why the int8 path here is ONNX Runtime's.
- `compare_latency` times variants in alternation on the same inputs, so a noisy machine slows them alike.
- `peak_memory_mb` measures each variant in a fresh process: the peak resident memory of a process that loads it
  and answers one batch, which is what a server with that variant would need.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str] = ("input_ids", "attention_mask"),
    output_names: Sequence[str] = ("logits",),
) -> Path:
    """Export `module` (called as module(*example)) to one self-contained ONNX file with torch.onnx.export
    (dynamo=True); every input's first two dimensions (batch, sequence) stay dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in input_names}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it notes every optional library (torchvision) it does not find
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, UserWarning))  # deprecations inside torch.export
            torch.onnx.export(
                module.eval(),
                example,
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=shapes,
            )
    finally:
        exporter_log.setLevel(level)
    return path


def quantize_int8(source: str | Path, target: str | Path, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic quantization: MatMul (and Gather) weights to signed int8, one scale per output
    channel when `per_channel`; activations are quantized at run time from each batch's own range."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)  # it warns through logging.warning() that optional pre-processing is recommended,
    try:  # which also installs a handler on the root logger (logging.basicConfig): both are undone below
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    return Path(target)


class OnnxModel:
    """An ONNX Runtime CPU session called like the PyTorch module: numpy (input_ids, attention_mask) -> outputs."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as torch uses
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))[0]


def torch_runner(module: torch.nn.Module) -> Callable[..., np.ndarray]:
    """The PyTorch module with the same numpy-in, numpy-out call as `OnnxModel`."""

    def run(*inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(*(torch.from_numpy(x) for x in inputs)).numpy()

    return run


def compare_latency(
    variants: dict[str, Callable[..., Any]], inputs: Sequence[tuple[np.ndarray, ...]], warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each variant on each input, the variants taking turns on every input (after `warmup`
    untimed calls each), so that load from elsewhere on the machine affects them alike."""
    for run in variants.values():
        for example in inputs[:warmup]:
            run(*example)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for example in inputs:
        for name, run in variants.items():
            start = time.perf_counter()
            run(*example)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def throughput(run: Callable[..., Any], batch: tuple[np.ndarray, ...], repeats: int = 3) -> float:
    """Examples per second on one batch: the batch size over the median of `repeats` timed calls (after one
    untimed call)."""
    run(*batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(*batch)
        times.append(time.perf_counter() - start)
    return len(batch[0]) / float(np.median(times))


def predict_in_batches(
    run: Callable[..., np.ndarray],
    encode: Callable[[list[str]], tuple[np.ndarray, ...]],
    texts: list[str],
    batch_size: int = 32,
) -> np.ndarray:
    """Outputs of `run` on `texts`, encoded `batch_size` at a time by `encode` (texts -> model inputs)."""
    return np.concatenate([run(*encode(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])


_MEMORY_PROBE = """
import json, resource, sys
def peak_mib():  # VmHWM: this process image's high-water mark (ru_maxrss would include the parent's, from fork)
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
args = json.loads(sys.argv[1])
import numpy as np
feed = [np.array(x, dtype=np.int64) for x in args["inputs"]]
if args["kind"] == "onnx":
    import onnxruntime as ort
    session = ort.InferenceSession(args["path"], providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, dict(zip([i.name for i in session.get_inputs()], feed)))
elif args["kind"] == "handlers":
    import torch
    sys.path.insert(0, args["path"] + "/code")
    import inference
    model = inference.model_fn(args["path"])
    run = lambda: model.network(*(torch.from_numpy(x) for x in feed))
else:
    run = lambda: None
run()
print(json.dumps({"peak_mib": peak_mib()}))
"""


def peak_memory_mb(kind: str, path: str | Path | None, inputs: Sequence[np.ndarray]) -> float:
    """Peak resident memory (MiB; Linux's VmHWM, else getrusage's ru_maxrss) of a fresh Python process that
    loads a model and runs it once on `inputs`. kind: "onnx" (an ONNX file, onnxruntime only), "handlers" (a
    model folder through its code/inference.py, so torch and transformers too), or "none" (numpy alone: the
    floor every process pays)."""
    if kind not in {"onnx", "handlers", "none"}:
        raise ValueError(f"kind must be onnx, handlers or none, got {kind!r}")
    args = json.dumps({"kind": kind, "path": str(path), "inputs": [x.tolist() for x in inputs]})
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the memory probe failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def file_size_mb(path: str | Path) -> float:
    """Size on disk in MB (10^6 bytes): of a file, or of every file under a folder (links followed)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def keep_layers(module: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A deep copy of a BERT-style model (anything with `.encoder.layer`, found at any depth) that keeps only the
    transformer blocks in `keep`, in order, initialised from the originals (as DistilBERT initialises its student
    from every other teacher layer, Sanh et al., 2019)."""
    student = copy.deepcopy(module)
    owner = next((m for m in student.modules() if hasattr(m, "encoder") and hasattr(m.encoder, "layer")), None)
    if owner is None:
        raise ValueError("no .encoder.layer list found: keep_layers works on BERT-style encoders")
    layers = owner.encoder.layer
    if not keep or any(not 0 <= i < len(layers) for i in keep):
        raise ValueError(f"keep must name layers in 0..{len(layers) - 1}, got {list(keep)}")
    owner.encoder.layer = torch.nn.ModuleList(layers[i] for i in keep)
    owner.config.num_hidden_layers = len(keep)
    return student


def distill_embeddings(
    student: torch.nn.Module,
    batches: list[tuple],
    targets: list[torch.Tensor],
    epochs: int,
    lr: float = 1e-4,
    progress: Callable[[Any], Any] = iter,
) -> list[float]:
    """Train a student (a module with `.embed(input_ids, attention_mask)`, such as a `keep_layers` copy of the
    served SentenceClassifier) to reproduce the teacher's sentence embeddings: mean squared error between
    `student.embed(*batch)` and the teacher's embedding of the same batch (`targets`, computed once), AdamW over
    the encoder only, `epochs` passes over `batches`, dropout on while training. Returns every step's loss. The
    student keeps the teacher's head, so its classifications follow wherever its embeddings do."""
    optimizer = torch.optim.AdamW(student.encoder.parameters(), lr=lr)
    losses = []
    student.train()
    for _ in progress(range(epochs)):
        for batch, target in zip(batches, targets, strict=True):
            loss = torch.nn.functional.mse_loss(student.embed(*batch), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    student.eval()
    return losses
