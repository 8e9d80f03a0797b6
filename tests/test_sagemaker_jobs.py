"""SageMaker requests built by utils.sagemaker_jobs, sent to moto's emulator with botocore's validation on, and
compared with reviewed JSON snapshots (tests/snapshots/). Regenerate a snapshot after a deliberate change with
UPDATE_SNAPSHOTS=1 and review the diff."""

import json
import os
import re
from pathlib import Path

import pytest
from botocore.exceptions import ParamValidationError

from utils import sagemaker_jobs as J
from utils import sagemaker_local as L

SNAPSHOTS = Path(__file__).parent / "snapshots"
HYPERPARAMETERS = {"steps": 100, "strategy": "ddp", "checkpoint-every": 20}


def normalised(request: dict) -> dict:
    """Timestamps in generated names and S3 keys replaced, so snapshots compare across runs."""
    text = json.dumps(request, indent=1, sort_keys=True)
    text = re.sub(r"-\d{14}(?=[\"/-])", "-<time>", text)
    text = re.sub(r"-\d{6}-\d{4}(?=[\"/-])", "-<time>", text)
    text = re.sub(r"tuning-\d{10}", "tuning-<time>", text)
    return json.loads(text)


def matches_snapshot(name: str, request: dict) -> bool:
    path = SNAPSHOTS / f"{name}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(normalised(request), indent=1, sort_keys=True) + "\n")
    return normalised(request) == json.loads(path.read_text())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return L.stage_source(tmp_path_factory.mktemp("job") / "code")


@pytest.fixture
def aws(tmp_path):
    with J.offline_sagemaker() as connection:
        data = tmp_path / "shards"
        data.mkdir()
        (data / "index.json").write_text("{}")
        connection.data_uri = J.upload_channel(connection, data, "course/shards")
        yield connection


def test_offline_mode_is_said_and_uses_a_placeholder_role(aws):
    assert aws.offline and aws.mode.startswith("offline") and aws.role == J.OFFLINE_ROLE
    assert aws.data_uri == f"s3://sagemaker-us-east-1-{J.OFFLINE_ACCOUNT}/course/shards"


def test_spot_training_job_request(aws, source):
    trainer = J.gpt_trainer(
        aws,
        source,
        HYPERPARAMETERS,
        instance_type="ml.g5.12xlarge",
        instance_count=2,
        processes_per_host=4,
        spot=True,
        max_run_seconds=3600,
        retries=2,
        checkpoint_s3_uri="s3://bucket/course/checkpoints",
    )
    job = J.start_training(trainer, aws.data_uri)
    request = aws.last_request("CreateTrainingJob")
    assert request["EnableManagedSpotTraining"] and request["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert request["InfraCheckConfig"] == {"EnableInfraCheck": True} and request["RetryStrategy"] == {
        "MaximumRetryAttempts": 2
    }
    assert {d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]} >= {"train:loss"}
    assert job.training_job_name == request["TrainingJobName"]
    assert matches_snapshot("create_training_job_spot", request)


def test_warm_pool_job_request(aws, source):
    trainer = J.gpt_trainer(aws, source, HYPERPARAMETERS, instance_type="ml.g5.xlarge", warm_pool_seconds=1800)
    J.start_training(trainer, aws.data_uri)
    request = aws.last_request("CreateTrainingJob")
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800 and not request["EnableManagedSpotTraining"]
    assert "InfraCheckConfig" not in request and "RetryStrategy" not in request  # one instance, no retries
    assert matches_snapshot("create_training_job_warm_pool", request)


def test_tuning_job_request(aws, source):
    tuner = J.gpt_tuner(J.gpt_trainer(aws, source, HYPERPARAMETERS), max_jobs=6, max_parallel_jobs=2)
    J.start_tuning(tuner, aws.data_uri, aws.data_uri.replace("shards", "held-out"))
    request = aws.last_request("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    channels = {c["ChannelName"]: c for c in request["TrainingJobDefinition"]["InputDataConfig"]}
    assert channels["validation"]["DataSource"]["S3DataSource"]["S3Uri"].endswith("course/held-out")
    assert request["TrainingJobDefinition"]["StaticHyperParameters"]["sagemaker_program"] == "train.py"
    assert matches_snapshot("create_hyper_parameter_tuning_job", request)


def test_hyperband_tuning_request_searches_the_local_space_on_validation_loss(aws, source):
    from utils import tuning

    space = [
        tuning.Dimension("lr", 1e-4, 1e-2, log=True),
        tuning.Dimension("warmup", 0, 20),
        tuning.Dimension("width", choices=(64, 128)),
    ]
    tuner = J.gpt_tuner(
        J.gpt_trainer(aws, source, HYPERPARAMETERS),
        ranges=tuning.parameter_ranges(space),
        objective="validation:loss",
        strategy="Hyperband",
        max_resource=5,
    )
    J.start_tuning(tuner, aws.data_uri, validation_s3_uri=aws.data_uri)
    request = aws.last_request("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 5}}
    assert config["Strategy"] == "Hyperband" and config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    assert set(tuning.space_from_parameter_ranges(config["ParameterRanges"])) == set(space)
    channels = [c["ChannelName"] for c in request["TrainingJobDefinition"]["InputDataConfig"]]
    assert channels[:2] == ["training", "validation"]  # then the SDK's own sm_drivers
    assert matches_snapshot("create_hyper_parameter_tuning_job_hyperband", request)


def test_tuner_refuses_what_sagemaker_or_the_program_cannot_do(aws, source):
    trainer = J.gpt_trainer(aws, source, HYPERPARAMETERS)
    with pytest.raises(ValueError, match="not a metric the program logs"):
        J.gpt_tuner(trainer, objective="val_loss")
    with pytest.raises(ValueError, match="SageMaker offers Bayesian"):
        J.gpt_tuner(trainer, strategy="Evolution")
    with pytest.raises(ValueError, match="Hyperband stops trials itself"):
        J.gpt_tuner(trainer, strategy="Hyperband")
    with pytest.raises(ValueError, match="needs held-out data"):
        J.start_tuning(J.gpt_tuner(trainer, objective="validation:loss"), aws.data_uri)


def test_pipeline_definition_and_request(aws, source):
    pipeline = J.gpt_pipeline(aws, source, HYPERPARAMETERS, aws.data_uri, instance_type="ml.g5.2xlarge")
    definition = json.loads(pipeline.definition())
    step = definition["Steps"][0]
    assert step["Type"] == "Training"
    assert step["Arguments"]["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    pipeline.upsert(role_arn=aws.role)
    assert aws.last_request("CreatePipeline")["PipelineName"] == "course-gpt-pipeline"
    assert matches_snapshot("pipeline_definition", definition)


def test_gated_pipeline_registers_only_below_the_validation_threshold(aws, source):
    pipeline = J.gated_pipeline(aws, source, HYPERPARAMETERS, aws.data_uri, aws.data_uri, max_validation_loss=5.5)
    definition = json.loads(pipeline.definition())
    train, gate = definition["Steps"]
    assert [c["ChannelName"] for c in train["Arguments"]["InputDataConfig"]][:2] == ["training", "validation"]
    condition = gate["Arguments"]["Conditions"][0]
    assert condition["Type"] == "LessThanOrEqualTo"
    assert condition["LeftValue"] == {"Get": "Steps.TrainGPT.FinalMetricDataList['validation:loss'].Value"}
    assert condition["RightValue"] == {"Get": "Parameters.MaxValidationLoss"}
    register, fail = gate["Arguments"]["IfSteps"][0], gate["Arguments"]["ElseSteps"][0]
    assert register["Type"] == "RegisterModel" and fail["Type"] == "Fail"
    assert register["Arguments"]["ModelApprovalStatus"] == "PendingManualApproval"
    assert {"Name": "MaxValidationLoss", "Type": "Float", "DefaultValue": 5.5} in definition["Parameters"]
    pipeline.upsert(role_arn=aws.role)
    assert aws.last_request("CreatePipeline")["PipelineName"] == "course-gated-pipeline"
    with pytest.raises(ValueError, match="model_group must be"):
        J.gated_pipeline(aws, source, HYPERPARAMETERS, aws.data_uri, aws.data_uri, 5.5, model_group="bad name!")


def test_botocore_rejects_a_malformed_request(aws):
    client = aws.session.boto_session.client("sagemaker")
    with pytest.raises(ParamValidationError, match="InstanceCount"):
        client.create_training_job(
            TrainingJobName="x",
            RoleArn=aws.role,
            OutputDataConfig={"S3OutputPath": "s3://b"},
            AlgorithmSpecification={"TrainingImage": "i", "TrainingInputMode": "File"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": "two", "VolumeSizeInGB": 30},
            StoppingCondition={"MaxRuntimeInSeconds": 60},
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"instance_type": "ml.g5.xlarg"}, "did you mean ml.g5.xlarge"),
        ({"instance_type": "p4d.24xlarge"}, "not a SageMaker training instance type"),
        ({"base_job_name": "course_gpt"}, "letters, digits and hyphens"),
        ({"spot": True, "warm_pool_seconds": 600}, "warm pools cannot be used with spot"),
        ({"spot": True, "max_run_seconds": 3600, "max_wait_seconds": 600}, "must be at least max run"),
        ({"instance_count": 0}, "at least 1"),
        ({"retries": 31}, "retries must be"),
        ({"warm_pool_seconds": 10**6}, "warm_pool_seconds must be"),
    ],
)
def test_bad_settings_fail_before_any_request(aws, source, options, message):
    before = len(aws.requests)
    with pytest.raises(ValueError, match=message):
        J.gpt_trainer(aws, source, HYPERPARAMETERS, **options)
    assert len(aws.requests) == before


def test_missing_source_and_data_fail_clearly(aws, tmp_path):
    with pytest.raises(FileNotFoundError, match="stage_source"):
        J.gpt_trainer(aws, tmp_path, HYPERPARAMETERS)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        J.upload_channel(aws, tmp_path / "missing", "x")


def test_live_mode_without_a_role_fails_before_any_request(monkeypatch):
    monkeypatch.delenv(J.ROLE_VARIABLE, raising=False)
    with pytest.raises(ValueError, match="SAGEMAKER_ROLE_ARN"):
        J.connect(offline=False)
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        J.connect(role="my-role", offline=False)


def test_images_for_cpu_gpu_and_neuron():
    assert J.container_image("ml.m5.xlarge").endswith("pytorch-training:2.6.0-cpu-py312")
    assert J.container_image("ml.p5.48xlarge").endswith("pytorch-training:2.6.0-gpu-py312")
    assert "pytorch-training-neuron" in J.container_image("ml.trn1.32xlarge")
    assert "inference-neuronx" in J.container_image("ml.inf2.xlarge", scope="inference")


def test_dockerfile_extends_the_sdk_image_and_pins_like_the_course():
    dockerfile = (L.REPO / "container" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert base == J.container_image("ml.g5.xlarge")
    assert "FROM ${BASE_IMAGE}" in dockerfile and "COPY train.py /opt/ml/code/train.py" in dockerfile
    for line in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (L.REPO / line).exists(), line
    course = dict(
        line.split("  #")[0].split("==")
        for line in (L.REPO / "requirements.txt").read_text().splitlines()
        if "==" in line
    )
    container = [line for line in (L.REPO / "container" / "requirements.txt").read_text().splitlines() if "==" in line]
    assert container and all(course[name] == version for name, version in (line.split("==") for line in container))


def test_no_credentials_means_offline_even_where_the_metadata_address_is_blocked(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert not J.has_aws_credentials()  # pytest-socket blocks 169.254.169.254 here


def test_the_data_channel_must_be_in_s3(aws, source):
    with pytest.raises(J.InvalidRequest, match="must be an s3://bucket/prefix URI"):
        J.start_training(J.gpt_trainer(aws, source, HYPERPARAMETERS), "runs/shards")


def test_reconnecting_offline_and_closing_restore_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    first = J.connect(offline=True)
    second = J.connect()  # a rerun notebook cell: the first emulator's fake keys must not look like real ones
    assert second.offline and first._emulator is None
    second.close()
    assert "AWS_ACCESS_KEY_ID" not in os.environ
