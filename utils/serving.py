"""A model server with SageMaker's hosting contract, the client that loads it, and the model folder it serves.

Defined for notebook 12 (book chapter 12); chapter 14 deploys its registered model with it. Standard library plus
FastAPI, uvicorn, httpx and sagemaker-inference (for the contract's error type); no other `utils` module.

**The contract.** A SageMaker inference container answers `GET /ping` (200 when it can serve) and
`POST /invocations` on port 8080 (SageMaker's documented hosting contract). This server does that for any *model
folder*: the layout SageMaker unpacks `model.tar.gz` into, that is weights (safetensors), a `serving.json` manifest
and `code/inference.py` with the PyTorch container's handlers (`model_fn`, `input_fn`, `predict_fn`, `output_fn`).
It imports those handlers exactly as the container does, so the code it serves is the code SageMaker would run.

**What it adds for load and bad input.** Dynamic batching (concurrent requests wait up to `max_wait_ms` to share
a forward pass of at most `max_batch`), token streaming (`"stream": true`, JSON Lines), a limit on requests in
flight (503 with Retry-After beyond it), a body-size limit (413), and every bad request answered with its 4xx
status and a message saying what to change. It binds to 127.0.0.1 unless told otherwise.

    python -m utils.serving serve MODEL_FOLDER [--port 8080] [--max-batch 16] [--max-wait-ms 10]

From Python, `start_server` runs that command as a background process, waits until /ping answers, and
`ServerProcess.stop()` ends it (and its process group) cleanly; `load_test` drives it with a bounded number of
concurrent clients on the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sagemaker_inference.errors import BaseInferenceToolkitError

ROOT = Path(__file__).resolve().parents[1]
SERVING_CODE = ROOT / "serving" / "code"  # the course's inference.py (and its requirements.txt)
MANIFEST = "serving.json"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # SageMaker sends /ping and /invocations to port 8080
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
#: SageMaker caps a real-time InvokeEndpoint payload at 6 MB (its endpoint quotas); 1 MiB is plenty for text.
DEFAULT_MAX_BODY_BYTES = 1 << 20
STREAM_TYPE = "application/jsonlines"


# ------------------------------------------------------------------------------------------------ model folders


def write_model_folder(
    dest: str | Path,
    weights_from: str | Path,
    manifest: dict[str, Any],
    extra_files: dict[str, str | Path] | None = None,
    code_dir: str | Path = SERVING_CODE,
    link: bool = True,
) -> Path:
    """Lay out a model folder: every file of `weights_from` (a Hugging Face folder saved with safetensors; linked,
    not copied, when `link`), `extra_files` ({name in folder: source file}, e.g. a head's safetensors), the
    manifest as serving.json and `code_dir` as code/. Refuses pickled weights (.bin, .pt, .pth, .pkl)."""
    source, dest = Path(weights_from), Path(dest)
    pickled = [p.name for p in source.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    if pickled:
        raise ValueError(f"{source} holds pickled weights {pickled}; save them with safetensors instead")
    if not any(source.glob("*.safetensors")):
        raise FileNotFoundError(f"{source} has no .safetensors weights; save the model with save_pretrained")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    files = {p.name: p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")}
    for name, path in (files | {k: Path(v) for k, v in (extra_files or {}).items()}).items():
        if link:
            (dest / name).symlink_to(path.resolve())
        else:
            shutil.copy2(path, dest / name)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.copytree(code_dir, dest / "code", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def package_model(folder: str | Path, tar_path: str | Path, compresslevel: int = 1) -> list[tuple[str, int]]:
    """Pack a model folder into the `model.tar.gz` SageMaker expects: its files at the archive's root and the
    handlers under code/ (links are stored as the files they point to). Returns (member, bytes) per file.
    gzip level 1: weights barely compress, and level 9 only costs time."""
    folder = Path(folder)
    with tarfile.open(tar_path, "w:gz", compresslevel=compresslevel, dereference=True) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            archive.add(path, arcname=str(path.relative_to(folder)))
    with tarfile.open(tar_path) as archive:
        return [(member.name, member.size) for member in archive.getmembers() if member.isfile()]


def load_handlers(model_dir: str | Path) -> ModuleType:
    """Import the folder's code/inference.py as SageMaker's container does (code/ on the path, module "inference"),
    under a name of its own so that several folders can be loaded in one process."""
    path = Path(model_dir) / "code" / "inference.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model folder needs code/inference.py (write_model_folder)")
    name = f"inference_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    missing = [fn for fn in ("model_fn", "input_fn", "predict_fn", "output_fn") if not hasattr(module, fn)]
    if missing:
        raise AttributeError(f"{path} lacks {missing}: SageMaker's PyTorch contract needs all four handlers")
    return module


# ------------------------------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class ServerSettings:
    """How the server batches and what it refuses. max_batch 1 switches batching off."""

    max_batch: int = 16  # requests per forward pass
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests in flight (queued, running or streaming) before new ones get 503
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_body_bytes < 1 or self.max_wait_ms < 0:
            raise ValueError(f"max_batch, max_queue, max_body_bytes must be >= 1 and max_wait_ms >= 0: {self}")


class ServerBusy(Exception):
    """More requests in flight than the server accepts (ServerSettings.max_queue)."""


class DynamicBatcher:
    """Groups concurrent requests into one `predict_batch` call: the first request waits up to `max_wait_s` for
    others, at most `max_batch` go together, and whatever queued while the model was busy goes in the next batch.
    `predict_batch` runs in a worker thread, so the event loop keeps accepting (and refusing) requests."""

    def __init__(self, predict_batch: Callable[[list[Any]], list[Any]], max_batch: int, max_wait_s: float):
        self.predict_batch, self.max_batch, self.max_wait_s = predict_batch, max_batch, max_wait_s
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        self.batch_sizes: list[int] = []

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.done()]  # clients that gave up
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = await asyncio.to_thread(self.predict_batch, [item for item, _ in batch])
            except Exception as error:  # the whole batch failed: every waiting request gets the error
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


@dataclass
class _State:
    handlers: ModuleType | None = None
    model: Any = None
    batcher: DynamicBatcher | None = None
    in_flight: int = 0
    counts: Counter = field(default_factory=Counter)  # /invocations responses by status
    cancelled_streams: int = 0
    last_cancelled_stream: dict[str, Any] | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(Exception):
    pass


def create_app(model_dir: str | Path, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """The FastAPI application serving `model_dir` under SageMaker's contract, plus GET /stats (counters: requests
    by status, batch sizes, cancelled streams) for the course's measurements. The model loads at start-up."""
    state = _State()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.handlers = load_handlers(model_dir)
        state.model = await asyncio.to_thread(state.handlers.model_fn, str(model_dir))
        batch_fn = getattr(state.handlers, "predict_batch_fn", None)
        if batch_fn is None:  # handlers without a batch function: one predict_fn call per request

            def batch_fn(items, model):
                return [state.handlers.predict_fn(item, model) for item in items]

        state.batcher = DynamicBatcher(
            lambda items: batch_fn(items, state.model), settings.max_batch, settings.max_wait_ms / 1000
        )
        worker = asyncio.create_task(state.batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="course model server (SageMaker hosting contract)", lifespan=lifespan)

    @app.middleware("http")
    async def count_statuses(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path == "/invocations":
            state.counts[response.status_code] += 1
        return response

    @app.get("/ping")
    async def ping() -> Any:
        return {"status": "healthy"} if state.model is not None else _error(503, "the model is still loading")

    @app.get("/stats")
    async def stats() -> Any:
        sizes = state.batcher.batch_sizes if state.batcher else []
        return {
            "settings": asdict(settings),
            "in_flight": state.in_flight,
            "responses": {str(k): v for k, v in sorted(state.counts.items())},
            "batches": len(sizes),
            "mean_batch_size": statistics.fmean(sizes) if sizes else 0.0,
            "max_batch_size": max(sizes, default=0),
            "cancelled_streams": state.cancelled_streams,
            "last_cancelled_stream": state.last_cancelled_stream,
        }

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except _TooLarge as error:
            return _error(
                413, f"the body is {error.args[0]:,} bytes; this endpoint takes at most {settings.max_body_bytes:,}"
            )
        if state.in_flight >= settings.max_queue:
            return _error(
                503,
                f"server busy: {state.in_flight} requests in flight (limit {settings.max_queue}); retry after a second",
                {"Retry-After": "1"},
            )
        state.in_flight += 1
        handed_to_stream = False
        try:
            data = state.handlers.input_fn(body, request.headers.get("content-type"))
            accept = request.headers.get("accept")
            if isinstance(data, dict) and data.get("stream"):
                if getattr(state.handlers, "stream_fn", None) is None:
                    raise BaseInferenceToolkitError(422, "this model's handlers cannot stream", "no stream_fn")
                handed_to_stream = True  # from here on, the stream's pump thread releases the slot when it ends
                return await _start_stream(state, data)
            result = await state.batcher.submit(data)
            if isinstance(result, Exception):
                raise result
            return Response(state.handlers.output_fn(result, accept), media_type="application/json")
        except BaseInferenceToolkitError as error:
            return _error(error.status_code, error.message)
        except Exception as error:  # a bug, not the client's fault: say so, log it, keep serving
            traceback.print_exc()
            return _error(500, f"internal error ({type(error).__name__}: {error}); the server keeps running")
        finally:
            if not handed_to_stream:
                state.in_flight -= 1

    async def _start_stream(state: _State, data: dict[str, Any]) -> Any:
        """Run stream_fn in a pump thread that feeds a queue; a client that goes away sets `cancelled`, which
        stops generation at the next token. Errors before the first piece are answered as ordinary 4xx/5xx."""
        stream_fn = state.handlers.stream_fn
        loop, queue, cancelled, done = asyncio.get_running_loop(), asyncio.Queue(), threading.Event(), object()

        def pump() -> None:
            last = None
            try:
                for last in stream_fn(data, state.model, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, last)
            except Exception as error:
                loop.call_soon_threadsafe(queue.put_nowait, error)
            finally:
                if cancelled.is_set():
                    state.last_cancelled_stream = last
                loop.call_soon_threadsafe(queue.put_nowait, done)
                loop.call_soon_threadsafe(_release)

        def _release() -> None:
            state.in_flight -= 1

        threading.Thread(target=pump, daemon=True).start()
        first = await queue.get()
        if isinstance(first, Exception):
            await queue.get()  # the pump's end marker: it has released its slot
            raise first

        async def lines() -> Any:
            piece, finished = first, False
            try:
                while piece is not done:
                    if isinstance(piece, Exception):
                        yield json.dumps({"error": str(piece)}) + "\n"
                        break
                    yield json.dumps(piece) + "\n"
                    piece = await queue.get()
                finished = True
            finally:
                if not finished:  # the client disconnected (starlette cancelled us) or the stream failed
                    cancelled.set()
                    state.cancelled_streams += 1

        return StreamingResponse(lines(), media_type=STREAM_TYPE)

    return app


def serve(
    model_dir: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    settings: ServerSettings = ServerSettings(),
) -> None:
    """Run the server in this process until SIGINT/SIGTERM (uvicorn's graceful shutdown: in-flight requests get
    up to 5 s to finish)."""
    import uvicorn

    uvicorn.run(create_app(model_dir, settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


# ------------------------------------------------------------------------------------------ background process

_running: list[ServerProcess] = []


@dataclass
class ServerProcess:
    """A server started by `start_server`: its process, base URL and log file."""

    process: subprocess.Popen
    url: str
    log_path: Path
    model_dir: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM to the server's process group (graceful shutdown), SIGKILL after `timeout` s; returns the exit
        code (0 for a clean shutdown). Safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ValueError):
            _running.remove(self)
        return self.process.returncode

    def wait_ready(self, timeout: float = 180.0) -> ServerProcess:
        """Wait until GET /ping answers 200; if the process exits or `timeout` s pass first, stop it and raise
        with the end of its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the server exited with code {self.process.returncode}; its log:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not answer /ping within {timeout:.0f} s; its log:\n{self.log_tail()}")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _stop_all() -> None:
    for server in list(_running):
        server.stop(timeout=5)


atexit.register(_stop_all)


def free_port(preferred: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
    """`preferred` if nothing listens there, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
                return probe.getsockname()[1]
            except OSError:
                continue
    raise OSError(f"no free port on {host}")


def start_server(
    model_dir: str | Path,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    settings: ServerSettings = ServerSettings(),
    log_path: str | Path | None = None,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start `python -m utils.serving serve` on `model_dir` as a background process in its own process group,
    wait until GET /ping answers 200 (`wait=False`: return at once, call `wait_ready` later, so that several
    servers load their models at the same time), and return it. The process dies with this one (Linux:
    parent-death signal; elsewhere: at interpreter exit). If it does not come up within `timeout` s it is stopped
    and the error shows its log. `port` None: 8080 if free, else any free port."""
    model_dir = Path(model_dir)
    load_handlers(model_dir)  # fail here, with the reason, rather than in the child
    port = port or free_port(DEFAULT_PORT, host)
    log_path = Path(log_path or model_dir.parent / f"server-{port}.log")
    command = [
        sys.executable,
        "-m",
        "utils.serving",
        "serve",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--max-batch",
        str(settings.max_batch),
        "--max-wait-ms",
        str(settings.max_wait_ms),
        "--max-queue",
        str(settings.max_queue),
        "--max-body-bytes",
        str(settings.max_body_bytes),
        "--exit-with-parent",
        str(os.getpid()),
    ]
    child_env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env | (env or {}), start_new_session=True
        )
    url_host = f"[{host}]" if ":" in host else host
    server = ServerProcess(process, f"http://{url_host}:{port}", log_path, model_dir)
    _running.append(server)
    return server.wait_ready(timeout) if wait else server


def _exit_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG), so a killed notebook
    kernel leaves no server behind; elsewhere, atexit in the parent is the only guard."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        sys.exit("the process that started the server has exited")


# ---------------------------------------------------------------------------------------------------- clients


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{url}: load tests run against loopback only (127.0.0.1, ::1, localhost), not {host}")


def invoke(url: str, payload: Any, timeout: float = 120.0) -> tuple[int, Any]:
    """POST a JSON payload to `url`/invocations; returns (status, decoded JSON body)."""
    response = httpx.post(f"{url}/invocations", json=payload, timeout=timeout)
    return response.status_code, response.json()


def stream_timing(url: str, payload: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Stream a generation and time it from the client's side: seconds to the first text piece (time to first
    token), seconds to the end, pieces received, the text and the server's final line."""
    start, first, pieces, final = time.perf_counter(), None, [], {}
    with httpx.stream("POST", f"{url}/invocations", json=payload | {"stream": True}, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"stream refused with {response.status_code}: {response.text}")
        for line in response.iter_lines():
            chunk = json.loads(line)
            if "text" in chunk:
                first = first or time.perf_counter() - start
                pieces.append(chunk["text"])
            else:
                final = chunk
    return {
        "first_token_s": first,
        "total_s": time.perf_counter() - start,
        "pieces": len(pieces),
        "text": "".join(pieces),
        **final,
    }


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 and mean of latencies, in milliseconds (percentiles by linear interpolation)."""
    if not seconds:
        raise ValueError("no latencies to summarise")
    ordered = sorted(seconds)

    def percentile(q: float) -> float:
        position = q / 100 * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return 1000 * (ordered[low] + (ordered[high] - ordered[low]) * (position - low))

    return {
        "p50_ms": percentile(50),
        "p95_ms": percentile(95),
        "p99_ms": percentile(99),
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


@dataclass
class LoadTestResult:
    """What `load_test` saw: per-request latency (s) and status, wall time, and generated tokens when reported."""

    latencies: list[float]
    statuses: Counter
    wall_s: float
    generated_tokens: int
    errors: list[str]

    @property
    def requests_per_s(self) -> float:
        return sum(self.statuses.values()) / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s

    def summary(self) -> dict[str, Any]:
        ok = [t for t in self.latencies if t is not None]
        return {
            "requests": sum(self.statuses.values()),
            "statuses": dict(self.statuses),
            "wall_s": self.wall_s,
            "requests_per_s": self.requests_per_s,
            "tokens_per_s": self.tokens_per_s,
            **(latency_summary(ok) if ok else {}),
        }


async def _load_test(
    url: str, payloads: list[Any], clients: int, requests_per_client: int, timeout: float
) -> LoadTestResult:
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    tokens = 0

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for turn in range(requests_per_client):
            payload = payloads[(index * requests_per_client + turn) % len(payloads)]
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/invocations", json=payload)
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
                errors.append(repr(error))
                continue
            statuses[response.status_code] += 1
            if response.status_code != 200:
                errors.append(response.text[:200])
                continue
            latencies.append(time.perf_counter() - start)
            answers = response.json()
            for answer in answers if isinstance(answers, list) else [answers]:
                tokens += answer.get("generated_tokens", 0) if isinstance(answer, dict) else 0

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(i, http) for i in range(clients))), timeout)
        wall = time.perf_counter() - start
    return LoadTestResult(latencies, statuses, wall, tokens, errors)


def load_test(
    url: str, payloads: list[Any], clients: int = 16, requests_per_client: int = 4, timeout: float = 300.0
) -> LoadTestResult:
    """`clients` concurrent closed-loop clients (each sends its next request when the previous one is answered)
    send `requests_per_client` requests each, cycling through `payloads`, then stop; everything is over within
    `timeout` s. Loopback URLs only. Runs its own event loop in a worker thread, so it works in a notebook too."""
    _check_loopback(url)
    if clients < 1 or requests_per_client < 1 or not payloads:
        raise ValueError("need at least one client, one request per client and one payload")
    return _run_in_thread(_load_test(url, payloads, clients, requests_per_client, timeout))


def _run_in_thread(coroutine: Any) -> Any:
    """asyncio.run in a separate thread (a notebook's own event loop is already running in the main thread)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = asyncio.run(coroutine)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.serving", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve a model folder (SageMaker hosting contract)")
    run.add_argument("model_dir", type=Path)
    run.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    defaults = ServerSettings()
    run.add_argument("--max-batch", type=int, default=defaults.max_batch, help="1 switches batching off")
    run.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    run.add_argument("--max-queue", type=int, default=defaults.max_queue, help="requests in flight before 503")
    run.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    run.add_argument("--exit-with-parent", type=int, metavar="PID", help="stop when process PID exits")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent)
    settings = ServerSettings(args.max_batch, args.max_wait_ms, args.max_queue, args.max_body_bytes)
    serve(args.model_dir, args.host, args.port, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
