"""Hosting the course's model folders on SageMaker with the Python SDK v3 (`sagemaker.serve.ModelBuilder`): run
in this process, or described as the requests a real endpoint needs (real-time, serverless, asynchronous, batch
transform), plus a large model sharded across GPUs in the large-model inference (LMI) container.

Defined for notebook 12 (book chapter 12). Depends on `utils.sagemaker_jobs` (its `connect()` gives the session,
live with AWS credentials or offline under moto, and records every request botocore validates and sends; its image
and instance-type checks). Import this module's functions after `connect()`: the SDK's `sagemaker.serve` builds an
AWS client when it is imported, which needs a region.

Two ways to run the same handlers (serving/code/inference.py):
- `in_process_endpoint`: ModelBuilder in Mode.IN_PROCESS wraps them in an `InferenceSpec` and serves them from a
  FastAPI server in a thread of this process (the SDK's own local test path; it listens on 127.0.0.1:9007).
- `endpoint_builder`: ModelBuilder in Mode.SAGEMAKER_ENDPOINT pointing AWS's PyTorch inference image at
  `model.tar.gz` in S3; the image runs code/inference.py through the same handler chain the tests run locally.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from utils.sagemaker_jobs import Connection, container_image, validate_instance_type

#: Environment of AWS's PyTorch inference container: the handler module and where it lives in the unpacked
#: model.tar.gz (sagemaker-inference's parameters), and TorchServe's workers and timeout
#: (sagemaker-pytorch-inference's ts_parameters). One worker: a model copy per worker would multiply memory.
PYTORCH_SERVING_ENV = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
    "SAGEMAKER_TS_MIN_WORKERS": "1",
    "SAGEMAKER_TS_MAX_WORKERS": "1",
    "SAGEMAKER_TS_RESPONSE_TIMEOUT": "60",
}
LMI_VERSION = "0.32.0"  # DJL Serving LMI image in sagemaker-core 2.27's offline table (vLLM backend, CUDA 12.6)
IN_PROCESS_PORT = 9007  # fixed by sagemaker-serve's in-process server


def _quiet_sdk() -> None:
    """Import the SDK's serving package without its side effect on logging (importing it runs
    `logging.basicConfig(level=INFO)` in sagemaker.core.experiments, which would print every library's INFO
    records), and keep only warnings from the SDK, which logs each default it fills in, and from its in-process
    server, which logs every request."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import sagemaker.serve  # noqa: F401  (the import whose side effect is undone here)

    root.setLevel(level)
    root.handlers[:] = handlers
    for name in ("sagemaker", "sagemaker.core", "sagemaker.serve", "botocore.credentials", "responses"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("uvicorn.error", "uvicorn.access"):  # uvicorn resets their levels, but keeps their filters
        if _warnings_only not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_warnings_only)


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _load_handlers(model_dir: Path) -> Any:
    path = model_dir / "code" / "inference.py"
    name = f"hosted_inference_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def handler_spec(model_dir: str | Path) -> Any:
    """An `InferenceSpec` whose load and invoke are the folder's SageMaker handlers: load = model_fn, invoke =
    input_fn -> predict_fn -> output_fn on the JSON request. `load(None)` loads this folder, as the in-process
    server asks."""
    _quiet_sdk()
    from sagemaker.serve import InferenceSpec

    folder = Path(model_dir)
    handlers = _load_handlers(folder)

    class HandlerSpec(InferenceSpec):
        def load(self, model_dir: str | None):
            return handlers.model_fn(str(model_dir or folder))

        def invoke(self, input_object: Any, model: Any):
            data = handlers.input_fn(json.dumps(input_object), "application/json")
            return json.loads(handlers.output_fn(handlers.predict_fn(data, model), "application/json"))

    return HandlerSpec()


def in_process_endpoint(
    connection: Connection, model_dir: str | Path, sample_input: Any, sample_output: Any
) -> tuple[Any, Any]:
    """Build and deploy the folder's handlers with ModelBuilder in Mode.IN_PROCESS; returns (builder, endpoint).
    `endpoint.invoke(body=payload).body` is the decoded answer; `stop_in_process(endpoint)` stops its server. The
    samples teach the SDK's SchemaBuilder how to (de)serialise and are sent once as its start-up health check."""
    _quiet_sdk()
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.builder.schema_builder import SchemaBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    schema = SchemaBuilder(sample_input, sample_output)
    builder = ModelBuilder(
        inference_spec=handler_spec(model_dir),
        schema_builder=schema,
        mode=Mode.IN_PROCESS,
        model_path=str(model_dir),
        role_arn=connection.role,
        sagemaker_session=connection.session,
        log_level=logging.ERROR,
    )
    builder.build(model_name="course-in-process")
    return builder, builder.deploy()


def stop_in_process(endpoint: Any) -> None:
    """Stop the in-process server thread that `in_process_endpoint` started."""
    endpoint.in_process_mode_obj.destroy_server()


def _drop_empty_structures(parsed: dict[str, Any], **_: Any) -> None:
    """moto answers DescribeModel with an empty VpcConfig, which sagemaker-core's Model refuses; SageMaker omits it."""
    for key in [key for key, value in parsed.items() if value == {}]:
        del parsed[key]


def _tolerate_emulator(connection: Connection) -> None:
    """Offline only: drop the empty structures moto puts in its answers, on the session's SageMaker client and on
    the clients sagemaker-core creates from its boto session later (they copy its event hooks when created)."""
    if connection.offline:
        for events in (connection.session.boto_session.events, connection.session.sagemaker_client.meta.events):
            events.register("after-call.sagemaker.*", _drop_empty_structures, unique_id="course-drop-empty")


def endpoint_builder(
    connection: Connection,
    model_data: str,
    instance_type: str = "ml.m5.xlarge",
    env: dict[str, str] | None = None,
    image: str | None = None,
) -> Any:
    """A ModelBuilder (Mode.SAGEMAKER_ENDPOINT) that hosts `model_data` (the s3:// URI of a model.tar.gz with
    code/inference.py) in AWS's PyTorch inference image for `instance_type` (CPU or GPU). Build one per
    deployment: the SDK carries one deployment's settings into the next if a builder is reused."""
    _quiet_sdk()
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    if not model_data.startswith("s3://"):
        raise ValueError(f"model_data must be the s3:// URI of model.tar.gz (upload it first), got {model_data!r}")
    validate_instance_type(instance_type, "inference")
    _tolerate_emulator(connection)
    return ModelBuilder(
        model_path=model_data,
        image_uri=image or container_image(instance_type, connection.region, scope="inference"),
        env_vars=PYTORCH_SERVING_ENV | (env or {}),
        role_arn=connection.role,
        sagemaker_session=connection.session,
        instance_type=instance_type,
        mode=Mode.SAGEMAKER_ENDPOINT,
        log_level=logging.ERROR,
    )


def deploy_real_time(builder: Any, name: str, instance_count: int = 1) -> Any:
    """CreateModel, CreateEndpointConfig (instances that stay up) and CreateEndpoint; returns the Endpoint."""
    builder.build(model_name=name)
    return builder.deploy(
        endpoint_name=name, initial_instance_count=instance_count, instance_type=builder.instance_type, wait=False
    )


def deploy_serverless(builder: Any, name: str, memory_mb: int = 3072, max_concurrency: int = 5) -> Any:
    """A serverless endpoint: capacity (memory 1,024-6,144 MB in 1 GB steps, vCPUs in proportion, no GPU) that
    SageMaker starts on demand, scales with traffic and bills per request duration; idle costs nothing, a cold
    start costs seconds."""
    from sagemaker.core.inference_config import ServerlessInferenceConfig

    if memory_mb not in range(1024, 6145, 1024):
        raise ValueError(f"serverless memory must be 1024, 2048, ..., 6144 MB, got {memory_mb}")
    builder.build(model_name=name)
    config = ServerlessInferenceConfig(memory_size_in_mb=memory_mb, max_concurrency=max_concurrency)
    return builder.deploy(endpoint_name=name, inference_config=config, wait=False)


def deploy_async(builder: Any, name: str, output_s3: str, instance_count: int = 1) -> Any:
    """An asynchronous endpoint: requests are files in S3 (InvokeEndpointAsync), answers are written to `output_s3`,
    a queue absorbs bursts, and the instance count may scale to zero between them."""
    from sagemaker.core.inference_config import AsyncInferenceConfig

    builder.build(model_name=name)
    return builder.deploy(
        endpoint_name=name,
        instance_type=builder.instance_type,
        wait=False,
        initial_instance_count=instance_count,
        inference_config=AsyncInferenceConfig(output_path=output_s3),
    )


def batch_transform(builder: Any, name: str, input_s3: str, output_s3: str, instance_count: int = 1) -> Any:
    """A batch transform job over a JSON Lines file in S3: each line is sent as one request (SingleRecord: the
    handlers take one JSON object per body), answers are assembled line by line into `output_s3`; the instances
    exist only for the job. Returns the SDK's Transformer."""
    builder.build(model_name=name)
    transformer = builder.transformer(
        instance_count=instance_count,
        instance_type=builder.instance_type,
        strategy="SingleRecord",
        assemble_with="Line",
        output_path=output_s3,
        accept="application/json",
        max_payload=6,
    )
    transformer.transform(data=input_s3, content_type="application/json", split_type="Line", wait=False, logs=False)
    return transformer


def tensor_parallel_degree(
    parameters: float,
    bytes_per_parameter: float,
    device_memory_gb: float,
    kv_cache_gb: float = 0.0,
    headroom: float = 0.9,
    devices: int = 8,
) -> int:
    """The smallest power-of-two number of devices whose memory holds the weights plus the KV cache when split
    evenly (tensor parallelism shards every weight matrix across them), using `headroom` of each device's memory
    (the rest: activations, CUDA context, fragmentation). ValueError if even `devices` are not enough."""
    need_gb = parameters * bytes_per_parameter / 1e9 + kv_cache_gb
    degree = 2 ** max(0, math.ceil(math.log2(need_gb / (device_memory_gb * headroom))))
    if degree > devices:
        raise ValueError(
            f"{need_gb:.0f} GB does not fit {devices} devices of {device_memory_gb} GB: quantize, or "
            "add pipeline parallelism across instances"
        )
    return degree


def lmi_builder(
    connection: Connection,
    model_s3: str,
    instance_type: str,
    tensor_parallel: int,
    max_batch: int = 64,
    max_model_len: int = 4096,
    dtype: str = "fp16",
) -> Any:
    """A ModelBuilder for the LMI (DJL Serving) image with the vLLM backend. `model_s3` is the s3:// prefix of an
    uncompressed Hugging Face folder (safetensors): SageMaker copies it to /opt/ml/model before the container
    starts, which for a model of tens of GB is much faster than unpacking a model.tar.gz. The model is sharded over
    `tensor_parallel` GPUs of one instance, and requests are batched per generated token (continuous batching,
    up to `max_batch` sequences). The settings are the container's documented environment variables (DJL
    Serving's LMI configuration guide); fp16 because older GPUs (T4, V100) have no bf16."""
    _quiet_sdk()
    from sagemaker.core import image_uris
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    if not model_s3.startswith("s3://") or not model_s3.endswith("/"):
        raise ValueError(f"model_s3 must be an s3:// prefix ending in '/', got {model_s3!r}")
    validate_instance_type(instance_type, "inference")
    env = {
        "HF_MODEL_ID": "/opt/ml/model",
        "OPTION_ROLLING_BATCH": "vllm",
        "TENSOR_PARALLEL_DEGREE": str(tensor_parallel),
        "OPTION_MAX_ROLLING_BATCH_SIZE": str(max_batch),
        "OPTION_MAX_MODEL_LEN": str(max_model_len),
        "OPTION_DTYPE": dtype,
    }
    source = {"S3DataSource": {"S3Uri": model_s3, "S3DataType": "S3Prefix", "CompressionType": "None"}}
    image = image_uris.retrieve("djl-lmi", region=connection.region, version=LMI_VERSION)
    _tolerate_emulator(connection)
    return ModelBuilder(
        image_uri=image,
        s3_model_data_url=source,
        env_vars=env,
        role_arn=connection.role,
        instance_type=instance_type,
        sagemaker_session=connection.session,
        mode=Mode.SAGEMAKER_ENDPOINT,
        log_level=logging.ERROR,
    )
