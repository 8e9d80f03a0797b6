"""SageMaker PyTorch inference handlers for the course's models (notebook 12, book chapter 12).

SageMaker's PyTorch serving container unpacks `model.tar.gz` into /opt/ml/model, puts /opt/ml/model/code on the
Python path and imports this file (`inference.py`, the default of SAGEMAKER_PROGRAM). Its handler chain
(sagemaker-inference's Transformer) then calls, once at start-up and per request:

    model = model_fn(model_dir)
    data = input_fn(request_body, request_content_type)
    prediction = predict_fn(data, model)
    response = output_fn(prediction, accept)

The model folder says what it holds in `serving.json` ({"task": "text-generation" | "text-classification", limits});
`model_fn` is the one place that turns a folder into a served model, so another chapter can serve its own model by
writing a folder with its manifest. Weights load only from safetensors files (no pickle is ever unpickled).

Two more functions are used by the course's own server (utils/serving.py) and ignored by SageMaker's toolkit:
`predict_batch_fn` (several requests in one forward pass, for dynamic batching) and `stream_fn` (generated text
piece by piece). Bad requests raise `RequestError`, a `BaseInferenceToolkitError`, so both servers answer them
with its 4xx status and message instead of a 500.

Request:  {"inputs": "text" | ["text", ...], "parameters": {...}, "stream": false}
  text-generation parameters: max_new_tokens (int), do_sample (bool), temperature (float > 0), top_p (0 < p <= 1)
Response: text-generation     {"generated_text": str, "generated_tokens": int, "finish_reason": "stop" | "length"}
          text-classification {"label": str, "scores": {label: probability}}
          (a list of these when "inputs" is a list)
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from sagemaker_inference.errors import BaseInferenceToolkitError
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

MANIFEST = "serving.json"
HEAD_FILE = "head.safetensors"  # text-classification: the linear head on the pooled sentence embedding
TASKS = ("text-generation", "text-classification")
JSON_TYPE = "application/json"
REQUEST_FIELDS = {"inputs", "parameters", "stream"}
GENERATION_PARAMETERS = {"max_new_tokens": int, "do_sample": bool, "temperature": float, "top_p": float}
#: Limits a manifest may override. max_input_tokens: MiniLM was trained on 256-token inputs (Reimers & Gurevych's
#: all-MiniLM-L6-v2 card); SmolLM2's context is 8,192 tokens, 512 keeps a CPU request short.
DEFAULT_LIMITS = {"max_input_tokens": 512, "max_new_tokens": 256, "default_new_tokens": 32, "max_inputs": 32}


class RequestError(BaseInferenceToolkitError):
    """A request the model cannot serve, with the HTTP status (4xx) and a message saying what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message, message)


@dataclass
class ServedModel:
    """What `model_fn` returns: the network, its tokenizer, and the manifest's task and limits."""

    task: str
    network: torch.nn.Module
    tokenizer: Any
    limits: dict[str, int]
    labels: list[str] = field(default_factory=list)  # text-classification only
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward pass at a time


class SentenceClassifier(torch.nn.Module):
    """A sentence encoder, mean pooling over real tokens, L2 normalisation (as sentence-transformers' all-MiniLM-L6-v2
    does) and a linear head: (input_ids, attention_mask) -> logits."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The folder's serving.json, checked: a known task, and limits that are positive integers."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model folder needs a {MANIFEST} naming its task {TASKS}")
    manifest = json.loads(path.read_text())
    if manifest.get("task") not in TASKS:
        raise ValueError(f"{path}: task must be one of {TASKS}, got {manifest.get('task')!r}")
    for name in DEFAULT_LIMITS:
        value = manifest.get(name, DEFAULT_LIMITS[name])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: {name} must be a positive integer, got {value!r}")
    return manifest


def model_fn(model_dir):
    """Load the folder's model for its task, weights from safetensors only, in eval mode on the CPU (or GPU)."""
    manifest = read_manifest(model_dir)
    limits = {name: manifest.get(name, default) for name, default in DEFAULT_LIMITS.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if manifest["task"] == "text-generation":
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        network = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32)
        return ServedModel(manifest["task"], network.to(device).eval(), tokenizer, limits)
    labels = list(manifest.get("labels", []))
    head_weights = load_file(Path(model_dir) / HEAD_FILE)
    if head_weights["weight"].shape[0] != len(labels):
        raise ValueError(f"{MANIFEST} names {len(labels)} labels but the head has {head_weights['weight'].shape[0]}")
    head = torch.nn.Linear(head_weights["weight"].shape[1], len(labels))
    head.load_state_dict(head_weights)
    encoder = AutoModel.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32)
    network = SentenceClassifier(encoder, head).to(device).eval()
    return ServedModel(manifest["task"], network, AutoTokenizer.from_pretrained(model_dir), limits, labels)


def _decode_body(request_body: bytes | str) -> str:
    if isinstance(request_body, (bytes, bytearray)):
        try:
            return bytes(request_body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(
                400,
                f"the body is not valid UTF-8 (byte {error.object[error.start]:#04x} at "
                f"position {error.start}); send JSON encoded as UTF-8",
            ) from None
    return request_body


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise RequestError(400, f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RequestError(400, f"{where} is empty; send some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(
            400,
            f"{where} holds an unpaired surrogate {text[error.start]!r} at position "
            f"{error.start}, which is not valid Unicode text",
        ) from None
    return text


def _check_parameters(parameters: Any) -> dict[str, Any]:
    """Known generation parameters of the right type and range, as Python values (max_new_tokens an int)."""
    if not isinstance(parameters, dict):
        raise RequestError(400, f"parameters must be an object, got {type(parameters).__name__}")
    checked: dict[str, Any] = {}
    for name, value in parameters.items():
        kind = GENERATION_PARAMETERS.get(name)
        if kind is None:
            raise RequestError(400, f"unknown parameter {name!r}; known: {', '.join(GENERATION_PARAMETERS)}")
        if kind is bool:
            if not isinstance(value, bool):
                raise RequestError(400, f"parameter {name} must be true or false, got {value!r}")
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(400, f"parameter {name} must be a finite number, got {value!r}")
        if kind is int and value != int(value):
            raise RequestError(400, f"parameter {name} must be a whole number, got {value!r}")
        checked[name] = kind(value)
    if checked.get("max_new_tokens", 1) < 1:
        raise RequestError(400, f"max_new_tokens must be at least 1, got {checked['max_new_tokens']}")
    if not 0 < checked.get("temperature", 1.0) <= 100 or not 0 < checked.get("top_p", 1.0) <= 1:
        raise RequestError(400, "temperature must be in (0, 100] and top_p in (0, 1]")
    return checked


def input_fn(request_body, request_content_type):
    """Decode and check a request: JSON (UTF-8) with "inputs" (text or list of texts), optional "parameters" and
    "stream". Anything else is a `RequestError` (400, or 415 for another content type) saying what is wrong."""
    media_type = (request_content_type or "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        raise RequestError(415, f"content type {request_content_type!r} is not supported; send {JSON_TYPE}")
    text = _decode_body(request_body)
    if not text.strip():
        raise RequestError(400, 'the body is empty; send {"inputs": "your text"}')
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply; send a flat object") from None
    if not isinstance(request, dict) or "inputs" not in request:
        raise RequestError(400, 'the body must be a JSON object with "inputs", e.g. {"inputs": "your text"}')
    unknown = set(request) - REQUEST_FIELDS
    if unknown:
        raise RequestError(400, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(REQUEST_FIELDS)}")
    inputs = request["inputs"]
    single = not isinstance(inputs, list)
    if single:
        texts = [_check_text(inputs, "inputs")]
    else:
        texts = [_check_text(text, f"inputs[{i}]") for i, text in enumerate(inputs)]
    if not texts:
        raise RequestError(400, "inputs is an empty list; send at least one text")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false, got {stream!r}")
    return {
        "texts": texts,
        "single": single,
        "parameters": _check_parameters(request.get("parameters", {})),
        "stream": stream,
    }


def _check_limits(data: dict[str, Any], model: ServedModel) -> None:
    limits = model.limits
    if len(data["texts"]) > limits["max_inputs"]:
        raise RequestError(
            422, f"{len(data['texts'])} inputs in one request; this endpoint takes at most {limits['max_inputs']}"
        )
    if model.task == "text-classification":
        if data["parameters"] or data["stream"]:
            raise RequestError(422, "text-classification takes no parameters and cannot stream")
        return
    wanted = data["parameters"].get("max_new_tokens", limits["default_new_tokens"])
    if wanted > limits["max_new_tokens"]:
        raise RequestError(422, f"max_new_tokens={wanted} is over this endpoint's limit of {limits['max_new_tokens']}")
    for i, text in enumerate(data["texts"]):
        count = len(model.tokenizer(_prompt(text, model), add_special_tokens=False)["input_ids"])
        if count > limits["max_input_tokens"]:
            raise RequestError(
                422,
                f"input {i} is {count} tokens long; this endpoint takes at most "
                f"{limits['max_input_tokens']}: shorten it",
            )


def _prompt(text: str, model: ServedModel) -> str:
    """The user's text inside the model's chat template when it has one (an instruction-tuned model), else as is."""
    if model.tokenizer.chat_template is None:
        return text
    return model.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


def _sampling(parameters: dict[str, Any], model: ServedModel) -> dict[str, Any]:
    settings = {
        "max_new_tokens": parameters.get("max_new_tokens", model.limits["default_new_tokens"]),
        "do_sample": parameters.get("do_sample", False),
        "pad_token_id": model.tokenizer.pad_token_id,
    }
    if settings["do_sample"]:
        settings |= {"temperature": parameters.get("temperature", 1.0), "top_p": parameters.get("top_p", 1.0)}
    return settings


def _eos_ids(model: ServedModel) -> set[int]:
    eos = model.network.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) | {model.tokenizer.eos_token_id}


def _generate(texts: list[str], settings: dict[str, Any], model: ServedModel) -> list[tuple[list[int], bool]]:
    """One batched `generate` (left padding) for prompts sharing sampling settings: per text, the generated token
    ids up to the first end-of-sequence token, and whether it stopped there."""
    batch = model.tokenizer(
        [_prompt(t, model) for t in texts], return_tensors="pt", padding=True, add_special_tokens=False
    ).to(model.network.device)
    with torch.inference_mode():
        output = model.network.generate(**batch, **settings)
    eos, results = _eos_ids(model), []
    for row in output[:, batch["input_ids"].shape[1] :].tolist():
        ends = [i for i, token in enumerate(row) if token in eos]
        results.append((row[: ends[0]], True) if ends else (row, False))
    return results


def _generation_result(ids: list[int], stopped: bool, max_new_tokens: int, model: ServedModel) -> dict[str, Any]:
    """The response for one prompt; a batch-mate may have generated longer, so cut to this request's length."""
    # With greedy decoding, the cut is exactly what a pass of its own would have generated; it stopped on an
    # end-of-sequence token only if that token came within its own budget.
    ids, stopped = ids[:max_new_tokens], stopped and len(ids) < max_new_tokens
    return {
        "generated_text": model.tokenizer.decode(ids, skip_special_tokens=True),
        "generated_tokens": len(ids),
        "finish_reason": "stop" if stopped else "length",
    }


def _classify(texts: list[str], model: ServedModel) -> list[dict[str, Any]]:
    limit = model.limits["max_input_tokens"]  # longer texts are truncated, as sentence-transformers does
    batch = model.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
    batch = batch.to(model.network.head.weight.device)
    with torch.inference_mode():
        probabilities = model.network(batch["input_ids"], batch["attention_mask"]).softmax(-1).tolist()
    return [
        {
            "label": model.labels[max(range(len(p)), key=p.__getitem__)],
            "scores": {label: round(q, 6) for label, q in zip(model.labels, p, strict=True)},
        }
        for p in probabilities
    ]


def predict_batch_fn(requests, model):
    """Serve several decoded requests in as few forward passes as possible: one per group of requests that share
    sampling settings (greedy requests with different lengths share one pass; each is cut to its own length).
    Returns one entry per request: its prediction, or the `RequestError` that request alone caused."""
    results: list[Any] = [None] * len(requests)
    groups: dict[Any, list[int]] = {}
    for i, data in enumerate(requests):
        try:
            _check_limits(data, model)
        except RequestError as error:
            results[i] = error
            continue
        key = None
        if model.task == "text-generation":
            settings = _sampling(data["parameters"], model)
            key = tuple(sorted((k, v) for k, v in settings.items() if k != "max_new_tokens"))
        groups.setdefault(key, []).append(i)
    with model.lock:
        for key, members in groups.items():
            texts = [t for i in members for t in requests[i]["texts"]]
            if model.task == "text-classification":
                outputs = _classify(texts, model)
            else:
                longest = max(_sampling(requests[i]["parameters"], model)["max_new_tokens"] for i in members)
                outputs = _generate(texts, dict(key) | {"max_new_tokens": longest}, model)
            for i in members:
                own, outputs = outputs[: len(requests[i]["texts"])], outputs[len(requests[i]["texts"]) :]
                if model.task == "text-generation":
                    wanted = _sampling(requests[i]["parameters"], model)["max_new_tokens"]
                    own = [_generation_result(ids, stopped, wanted, model) for ids, stopped in own]
                results[i] = own[0] if requests[i]["single"] else own
    return results


def predict_fn(input_data, model):
    """One request's prediction (SageMaker's handler chain calls this once per request)."""
    result = predict_batch_fn([input_data], model)[0]
    if isinstance(result, RequestError):
        raise result
    return result


def output_fn(prediction, accept):
    """The prediction as JSON; any other Accept type is a 406."""
    wanted = [part.split(";")[0].strip().lower() for part in (accept or "*/*").split(",")]
    if not {JSON_TYPE, "*/*", "application/*"} & set(wanted):
        raise RequestError(406, f"cannot answer in {accept!r}; accept {JSON_TYPE}")
    return json.dumps(prediction)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts the generated tokens it was given (end-of-sequence excluded)."""

    def __init__(self, tokenizer: Any, eos: set[int], **kwargs: Any):
        super().__init__(tokenizer, **kwargs)
        self.eos, self.tokens, self._prompt_seen = eos, 0, False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.tokens += sum(token not in self.eos for token in value.flatten().tolist())
        self._prompt_seen = True
        super().put(value)


def stream_fn(input_data, model, cancelled):
    """Generate for one text and yield {"text": piece} as tokens arrive, then {"generated_tokens", "finish_reason"}
    ("cancelled" when `cancelled`, a threading.Event, was set: the client went away). Generation runs in a thread
    and stops at the next token once `cancelled` is set, so a disconnected client costs at most one more token."""
    _check_limits(input_data, model)
    if model.task != "text-generation" or len(input_data["texts"]) != 1:
        raise RequestError(422, "streaming needs a text-generation model and a single input")
    settings = _sampling(input_data["parameters"], model)
    batch = model.tokenizer(_prompt(input_data["texts"][0], model), return_tensors="pt", add_special_tokens=False)
    streamer = _CountingStreamer(
        model.tokenizer, _eos_ids(model), skip_prompt=True, skip_special_tokens=True, timeout=120
    )
    stop = StoppingCriteriaList([_StopWhenSet(cancelled)])
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with model.lock, torch.inference_mode():
                model.network.generate(
                    **batch.to(model.network.device), **settings, streamer=streamer, stopping_criteria=stop
                )
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield from ({"text": piece} for piece in streamer if piece)
    worker.join()
    if failure:
        raise failure[0]
    if cancelled.is_set():
        reason = "cancelled"
    else:
        reason = "length" if streamer.tokens >= settings["max_new_tokens"] else "stop"
    yield {"generated_tokens": streamer.tokens, "finish_reason": reason}
