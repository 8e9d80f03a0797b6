"""The model server (utils/serving.py) and the handlers it serves (serving/code/inference.py): SageMaker's hosting
contract, dynamic batching, streaming, and a clear 4xx/503 for every kind of bad input while it keeps serving.

One server is started for the whole module, on a tiny random model: the contract is under test, not the model."""

import json
import signal
import socket
import tarfile
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import one_thread, tiny_classifier, tiny_generator  # noqa: F401 (a fixture)

from utils import serving as S

BODY_LIMIT, QUEUE_LIMIT, MAX_BATCH = 4096, 6, 4
ANSWERED = {200, 400, 406, 413, 415, 422}  # what a request may get; never a 5xx


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, see tiny_models.one_thread


@pytest.fixture(scope="module")
def generator_dir():
    return tiny_generator({"max_new_tokens": 1500})


@pytest.fixture(scope="module")
def server(generator_dir):
    settings = S.ServerSettings(max_batch=MAX_BATCH, max_wait_ms=20, max_queue=QUEUE_LIMIT, max_body_bytes=BODY_LIMIT)
    process = S.start_server(generator_dir, port=S.free_port(18180), settings=settings, env={"OMP_NUM_THREADS": "1"})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def handlers(generator_dir):
    module = S.load_handlers(generator_dir)
    return module, module.model_fn(str(generator_dir))


def post(server, body: bytes, content_type: str = "application/json", **headers) -> httpx.Response:
    return httpx.post(
        f"{server.url}/invocations", content=body, headers={"content-type": content_type, **headers}, timeout=120
    )


def still_serving(server) -> bool:
    ping = httpx.get(f"{server.url}/ping", timeout=10)
    status, answer = S.invoke(server.url, {"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    return ping.status_code == 200 and status == 200 and answer["generated_tokens"] <= 2


def test_ping_and_invocations_follow_sagemakers_contract(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{server.url}/ping").json() == {"status": "healthy"}
    status, answer = S.invoke(server.url, {"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
    assert status == 200 and set(answer) == {"generated_text", "generated_tokens", "finish_reason"}
    status, answers = S.invoke(server.url, {"inputs": ["Hello", "Good morrow"], "parameters": {"max_new_tokens": 3}})
    assert status == 200 and len(answers) == 2 and all(a["generated_tokens"] <= 3 for a in answers)


BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": "Hi"', "application/json", 400, "malformed JSON"),
    "wrong content type": (b"Hello", "text/plain", 415, "not supported"),
    "empty body": (b"", "application/json", 400, "empty"),
    "oversized body": (json.dumps({"inputs": "x" * BODY_LIMIT}).encode(), "application/json", 413, "at most"),
    "too many tokens requested": (
        b'{"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}',
        "application/json",
        422,
        "over this endpoint's limit",
    ),
    "prompt too long": (json.dumps({"inputs": "word " * 700}).encode(), "application/json", 422, "tokens long"),
    "invalid UTF-8": (b'{"inputs": "\xff\xfe"}', "application/json", 400, "not valid UTF-8"),
    "unpaired surrogate": (b'{"inputs": "\\ud800"}', "application/json", 400, "surrogate"),
    "not an object": (b'["Hi"]', "application/json", 400, "JSON object"),
    "unknown field": (b'{"inputs": "Hi", "temperature": 2}', "application/json", 400, "unknown field"),
    "unknown parameter": (b'{"inputs": "Hi", "parameters": {"beams": 4}}', "application/json", 400, "unknown"),
    "wrong parameter type": (
        b'{"inputs": "Hi", "parameters": {"max_new_tokens": "ten"}}',
        "application/json",
        400,
        "number",
    ),
    "too many inputs": (json.dumps({"inputs": ["Hi"] * 9}).encode(), "application/json", 422, "at most"),
    "deeply nested JSON": (b"[" * 3000, "application/json", 400, "nested too deeply"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx(server, case):
    body, content_type, status, message = BAD_REQUESTS[case]
    response = post(server, body, content_type)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_an_unsupported_accept_type_is_406_and_the_server_keeps_serving(server):
    response = post(server, b'{"inputs": "Hi", "parameters": {"max_new_tokens": 1}}', accept="text/csv")
    assert response.status_code == 406 and "application/json" in response.json()["error"]
    assert still_serving(server)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/csv", "", "a/b; x=1"]))
def test_random_bytes_never_get_a_5xx(server, body, content_type):
    assert post(server, body, content_type).status_code in ANSWERED


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
request_payloads = st.fixed_dictionaries(
    {"inputs": json_values}, optional={"parameters": json_values, "stream": json_values}
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=request_payloads | json_values)
def test_random_json_never_gets_a_5xx(server, payload):
    if isinstance(payload, dict) and payload.get("stream") is True:
        payload["stream"] = False  # streams are tested below; here every answer is a complete response
    response = post(server, json.dumps(payload).encode())
    assert response.status_code in ANSWERED, response.text


def test_after_random_input_the_server_still_serves(server):
    assert still_serving(server)


def test_concurrent_requests_are_batched_and_answered_as_if_alone(server):
    prompts = [f"Tell me about {word}" for word in ("kings", "fools", "storms", "ghosts")]
    payloads = [{"inputs": p, "parameters": {"max_new_tokens": 2 + i}} for i, p in enumerate(prompts)]
    alone = [S.invoke(server.url, payload)[1] for payload in payloads]
    before = httpx.get(f"{server.url}/stats").json()["batches"]
    together = [None] * len(prompts)

    def send(i):
        together[i] = S.invoke(server.url, payloads[i])[1]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = httpx.get(f"{server.url}/stats").json()
    assert stats["batches"] - before < len(prompts) and 1 < stats["max_batch_size"] <= MAX_BATCH
    assert together == alone  # greedy: left padding and each request's own length give the same tokens


def test_streaming_sends_pieces_then_a_summary(server):
    timing = S.stream_timing(server.url, {"inputs": "Hello", "parameters": {"max_new_tokens": 12}})
    assert timing["finish_reason"] in {"length", "stop"} and 0 < timing["generated_tokens"] <= 12
    assert 0 < timing["first_token_s"] <= timing["total_s"]


def test_a_client_that_disconnects_mid_stream_stops_the_generation(server):
    payload = {"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 1500}}
    with httpx.stream("POST", f"{server.url}/invocations", json=payload, timeout=30) as response:
        assert response.status_code == 200 and "text" in json.loads(next(response.iter_lines()))
    deadline = time.monotonic() + 20
    while (stats := httpx.get(f"{server.url}/stats").json())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["in_flight"] == 0 and stats["cancelled_streams"] >= 1
    assert stats["last_cancelled_stream"]["finish_reason"] == "cancelled"
    assert stats["last_cancelled_stream"]["generated_tokens"] < 1500
    assert still_serving(server)


def test_a_refused_stream_gets_its_4xx_and_gives_back_its_slot(server):
    response = post(server, b'{"inputs": "Hi", "stream": true, "parameters": {"max_new_tokens": 99999}}')
    assert response.status_code == 422 and "limit" in response.json()["error"]
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/stats").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server.url}/stats").json()["in_flight"] == 0


def test_a_flood_beyond_the_queue_limit_gets_503_with_retry_after(server):
    responses = [None] * 4 * QUEUE_LIMIT

    def send(i):
        responses[i] = post(server, b'{"inputs": "Hello", "parameters": {"max_new_tokens": 20}}')

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(responses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [r.status_code for r in responses]
    assert statuses.count(503) > 0 and statuses.count(200) >= 1 and set(statuses) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert f"limit {QUEUE_LIMIT}" in busy.json()["error"] and busy.headers["retry-after"] == "1"
    assert still_serving(server)


def test_load_test_reports_latency_percentiles_and_refuses_other_hosts(server):
    result = S.load_test(
        server.url, [{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}], clients=3, requests_per_client=2
    )
    summary = result.summary()
    assert summary["requests"] == 6 and summary["statuses"] == {200: 6}
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] and result.tokens_per_s > 0
    with pytest.raises(ValueError, match="loopback"):
        S.load_test("http://10.0.0.1:8080", [{}])


def test_stop_is_graceful_and_leaves_no_process(server):
    process = psutil.Process(server.process.pid)
    family = [process, *process.children(recursive=True)]
    assert server.stop() == -signal.SIGTERM  # uvicorn shut down gracefully, then re-raised SIGTERM
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))  # the port is free again
    assert server.stop() == -signal.SIGTERM  # a second stop is harmless


BROKEN_HANDLERS = """
def model_fn(model_dir):
    raise ValueError("serving.json names a task this code does not know")
input_fn = predict_fn = output_fn = None
"""


def test_a_server_that_cannot_start_says_why(tmp_path):
    broken = tmp_path / "broken"
    (broken / "code").mkdir(parents=True)
    (broken / "code" / "inference.py").write_text(BROKEN_HANDLERS)
    with pytest.raises(RuntimeError, match="names a task this code does not know"):
        S.start_server(broken, port=S.free_port(18190), timeout=60)


def test_a_folder_without_a_known_task_is_refused(handlers, tmp_path):
    module, _ = handlers
    (tmp_path / "serving.json").write_text('{"task": "translation"}')
    with pytest.raises(ValueError, match="task must be one of"):
        module.model_fn(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="serving.json"):
        module.model_fn(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------- handlers, without a server


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_input_fn_accepts_or_refuses_with_a_4xx(handlers, body):
    module, _ = handlers
    try:
        data = module.input_fn(body, "application/json")
    except module.RequestError as error:
        assert 400 <= error.status_code < 500 and error.message
    else:
        assert data["texts"] and all(isinstance(t, str) for t in data["texts"])


def test_one_bad_request_in_a_batch_fails_alone(handlers):
    module, model = handlers
    good = module.input_fn(b'{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}', "application/json")
    bad = module.input_fn(b'{"inputs": "Hi", "parameters": {"max_new_tokens": 9999}}', "application/json")
    results = module.predict_batch_fn([good, bad, good], model)
    assert isinstance(results[1], module.RequestError) and results[1].status_code == 422
    assert results[0] == results[2] and results[0]["generated_tokens"] <= 2


def test_classifier_handlers_return_a_label_and_probabilities():
    folder = tiny_classifier()
    module = S.load_handlers(folder)
    model = module.model_fn(str(folder))
    data = module.input_fn('{"inputs": ["To be", "or not"]}', "application/json")
    answer = json.loads(module.output_fn(module.predict_fn(data, model), None))
    assert len(answer) == 2 and all(a["label"] in ("comedy", "history", "tragedy") for a in answer)
    assert all(abs(sum(a["scores"].values()) - 1) < 1e-4 for a in answer)
    with pytest.raises(module.RequestError, match="no parameters"):
        module.predict_fn(
            module.input_fn('{"inputs": "x", "parameters": {"do_sample": true}}', "application/json"), model
        )


# ------------------------------------------------------------------------------------------ folders and archives


def test_model_folder_refuses_pickled_weights_and_packs_into_model_tar_gz(tmp_path, generator_dir):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        S.write_model_folder(tmp_path / "out", pickled, {"task": "text-generation"})
    members = dict(S.package_model(generator_dir, tmp_path / "model.tar.gz"))
    assert {"serving.json", "model.safetensors", "code/inference.py", "code/requirements.txt"} <= set(members)
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        assert all(member.isfile() for member in archive.getmembers())  # links were stored as the files
    assert members["model.safetensors"] == (generator_dir / "model.safetensors").stat().st_size


def test_latency_summary_matches_numpy_percentiles():
    seconds = list(np.random.default_rng(0).exponential(0.05, size=101))
    summary = S.latency_summary(seconds)
    for q in (50, 95, 99):
        assert summary[f"p{q}_ms"] == pytest.approx(1000 * np.percentile(seconds, q))


def test_free_port_prefers_the_one_asked_for():
    port = S.free_port(18199)
    assert port == 18199 or port > 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert S.free_port(taken.getsockname()[1]) != taken.getsockname()[1]
