"""SageMaker hosting requests built by utils.sagemaker_hosting, sent to moto's emulator with botocore's validation
on and compared with reviewed JSON snapshots (tests/snapshots/hosting_*.json; regenerate after a deliberate change
with UPDATE_SNAPSHOTS=1 and review the diff), and ModelBuilder's in-process mode serving the course's handlers."""

import json
import os
import re
from pathlib import Path

import pytest
from tiny_models import tiny_classifier

from utils import sagemaker_jobs as J
from utils import serving as S

SNAPSHOTS = Path(__file__).parent / "snapshots"


def normalised(request: dict) -> dict:
    """Generated ids (32 hex digits) and timestamps replaced, so snapshots compare across runs."""
    text = json.dumps(request, indent=1, sort_keys=True)
    text = re.sub(r"[0-9a-f]{32}", "<id>", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}", "<time>", text)
    text = re.sub(r"-\d{10}-[0-9a-f]{4}(?=[\"/])", "-<time>", text)  # the SDK's unique_name_from_base
    return json.loads(text)


def matches_snapshot(name: str, request: dict) -> bool:
    path = SNAPSHOTS / f"hosting_{name}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(normalised(request), indent=1, sort_keys=True) + "\n")
    return normalised(request) == json.loads(path.read_text())


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    with J.offline_sagemaker() as connection:
        from utils import sagemaker_hosting as H  # after connect(): the SDK builds an AWS client on import

        archive = tmp_path_factory.mktemp("hosting") / "model.tar.gz"
        S.package_model(tiny_classifier(), archive)
        connection.model_data = connection.session.upload_data(str(archive), key_prefix="course/genre")
        connection.hosting = H
        yield connection


def requests_of(aws, start: int) -> dict:
    return {name: parameters for name, parameters in aws.requests[start:]}


def test_real_time_endpoint_runs_the_handlers_in_the_pytorch_image(aws):
    start = len(aws.requests)
    aws.hosting.deploy_real_time(aws.hosting.endpoint_builder(aws, aws.model_data, "ml.m5.xlarge"), "genre-rt")
    sent = requests_of(aws, start)
    container = sent["CreateModel"]["PrimaryContainer"]
    assert container["ModelDataUrl"] == aws.model_data and "pytorch-inference" in container["Image"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert sent["CreateEndpointConfig"]["ProductionVariants"][0]["InstanceType"] == "ml.m5.xlarge"
    assert matches_snapshot("real_time", {k: sent[k] for k in ("CreateModel", "CreateEndpointConfig")})


def test_serverless_and_async_endpoints(aws):
    start = len(aws.requests)
    aws.hosting.deploy_serverless(aws.hosting.endpoint_builder(aws, aws.model_data), "genre-sls", memory_mb=2048)
    serverless = requests_of(aws, start)["CreateEndpointConfig"]
    assert serverless["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in serverless["ProductionVariants"][0]
    start = len(aws.requests)
    output = f"s3://{aws.session.default_bucket()}/course/async-out/"
    aws.hosting.deploy_async(aws.hosting.endpoint_builder(aws, aws.model_data), "genre-async", output)
    asynchronous = requests_of(aws, start)["CreateEndpointConfig"]
    assert asynchronous["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == output
    assert "ServerlessConfig" not in asynchronous["ProductionVariants"][0]
    assert matches_snapshot("serverless_and_async", {"serverless": serverless, "async": asynchronous})
    with pytest.raises(ValueError, match="1024, 2048"):
        aws.hosting.deploy_serverless(aws.hosting.endpoint_builder(aws, aws.model_data), "genre-x", memory_mb=5000)


def test_batch_transform_sends_one_json_line_per_request(aws):
    start = len(aws.requests)
    bucket = aws.session.default_bucket()
    aws.hosting.batch_transform(
        aws.hosting.endpoint_builder(aws, aws.model_data),
        "genre-batch",
        f"s3://{bucket}/course/batch-in/",
        f"s3://{bucket}/course/batch-out/",
    )
    job = requests_of(aws, start)["CreateTransformJob"]
    assert job["BatchStrategy"] == "SingleRecord" and job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"]["AssembleWith"] == "Line"
    assert matches_snapshot("batch_transform", job)


def test_lmi_tensor_parallel_endpoint_and_the_degree_it_needs(aws):
    H = aws.hosting
    assert H.tensor_parallel_degree(135e6, 4, 16) == 1  # SmolLM2 fits anywhere
    assert H.tensor_parallel_degree(13e9, 2, 16, kv_cache_gb=4) == 4  # 30 GB over 16 GB GPUs at 90%: 4 of them
    with pytest.raises(ValueError, match="pipeline"):
        H.tensor_parallel_degree(405e9, 2, 24)
    start = len(aws.requests)
    H.deploy_real_time(H.lmi_builder(aws, "s3://bucket/models/llama-13b/", "ml.g4dn.12xlarge", 4), "llm-tp4")
    model = requests_of(aws, start)["CreateModel"]["PrimaryContainer"]
    assert "djl-inference" in model["Image"] and model["Environment"]["TENSOR_PARALLEL_DEGREE"] == "4"
    assert matches_snapshot("lmi_tensor_parallel", model)
    with pytest.raises(ValueError, match="not a SageMaker inference instance type"):
        H.endpoint_builder(aws, aws.model_data, "ml.g5.huge")
    with pytest.raises(ValueError, match="s3://"):
        H.endpoint_builder(aws, "model.tar.gz")


def test_model_builder_in_process_serves_the_same_handlers(aws):
    sample = {"inputs": "To be, or not to be"}
    handlers = S.load_handlers(tiny_classifier())
    expected = json.loads(
        handlers.output_fn(
            handlers.predict_fn(
                handlers.input_fn(json.dumps(sample), "application/json"), handlers.model_fn(str(tiny_classifier()))
            ),
            None,
        )
    )
    builder, endpoint = aws.hosting.in_process_endpoint(aws, tiny_classifier(), sample, expected)
    try:
        assert endpoint.invoke(body=sample).body == expected
    finally:
        aws.hosting.stop_in_process(endpoint)
