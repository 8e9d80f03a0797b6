"""SageMaker training jobs, tuning jobs and pipelines for the course's training program, with or without AWS.

Defined for notebooks 04 and 08 (book chapters 4 and 8); the only course module that imports the SageMaker Python
SDK (v3: `sagemaker.train.ModelTrainer`, `sagemaker.core`, `sagemaker.mlops`).

Two modes, one code path. `connect()` looks for AWS credentials:
- **live**: credentials and an IAM role ARN (argument, or `SAGEMAKER_ROLE_ARN`) exist. Requests go to AWS and start
  real, billed jobs.
- **offline** (no credentials: a learner's laptop, CI): `moto`'s in-process AWS emulator answers instead. botocore
  still validates every request against SageMaker's published API model before "sending" it, so a wrong field name,
  type or missing parameter fails exactly as it would against AWS; moto does not check enumerations or name
  patterns, so this module checks every value its helpers send (instance types, names, channel names, S3 URIs,
  counts and time limits, hyperparameters) against the same API model itself, before any request: a value AWS would
  reject raises `InvalidRequest` naming the argument and the rule it breaks, also live. Nothing
  runs in offline mode: a job's emulated status is not a trained model (notebook 08 runs the job locally with
  `utils.sagemaker_local` for that).

Every request is recorded (`Connection.requests`) as the JSON botocore sends, so notebooks print and tests
snapshot them. Depends on `utils.train_settings` (the metric regexes of the training program).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.session

from utils.train_settings import METRIC_DEFINITIONS

ROLE_VARIABLE = "SAGEMAKER_ROLE_ARN"
DEFAULT_REGION = "us-east-1"
OFFLINE_ACCOUNT = "123456789012"  # moto's fixed account id
OFFLINE_ROLE = f"arn:aws:iam::{OFFLINE_ACCOUNT}:role/CourseSageMakerRole"
# AWS Deep Learning Container versions in sagemaker-core 2.27's offline image table: PyTorch for CPU and GPU; for
# Trainium training, `image_uris.retrieve` accepts only the `pytorch` framework, whose newest Neuron training image
# in the table is PyTorch 1.11; for Inferentia inference, the Hugging Face Neuron (neuronx) image.
PYTORCH_VERSION, PYTHON_VERSION = "2.6.0", "py312"
NEURON_TRAINING_PYTORCH = "1.11.0"
NEURON_TRANSFORMERS, NEURON_INFERENCE_PYTORCH = "4.55.4", "pytorch2.8.0"
CHECKPOINTS_IN_CONTAINER = "/opt/ml/checkpoints"  # utils.train's default checkpoint folder on SageMaker


def _set_environment(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set environment variables (None removes one); returns their previous values, which this restores."""
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return previous


@functools.cache
def _api_model():
    """SageMaker's service model from the installed botocore, parsed once (about 1 s: the JSON is several MB)."""
    return botocore.session.get_session().get_service_model("sagemaker")


def instance_types(kind: str = "training") -> list[str]:
    """Instance types SageMaker's API model accepts: `training` (TrainingInstanceType) or `inference`
    (ProductionVariantInstanceType), from the botocore installed here."""
    shape = {"training": "TrainingInstanceType", "inference": "ProductionVariantInstanceType"}[kind]
    return list(_api_model().shape_for(shape).enum)


def validate_instance_type(name: str, kind: str = "training") -> str:
    """`name` if SageMaker accepts it for `kind`, else ValueError naming the closest valid types."""
    valid = instance_types(kind)
    if not isinstance(name, str):
        raise InvalidRequest(
            f"instance type is required: a SageMaker {kind} instance type such as ml.g5.xlarge, got {name!r}"
        )
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (SageMaker names look like ml.g5.xlarge)"
        raise InvalidRequest(f"{name!r} is not a SageMaker {kind} instance type{hint}")
    return name


def validate_job_name(name: str) -> str:
    """`name` if it fits SageMaker's TrainingJobName pattern (1-63 letters, digits and single hyphens inside), else
    ValueError. The SDK appends a 15-character timestamp to base job names, so keep those to 47 characters."""
    try:
        return _check_text("job name", name, "TrainingJobName")
    except InvalidRequest:
        raise InvalidRequest(
            f"job name {name!r}: use 1-63 letters, digits and hyphens, starting with a letter or "
            "digit (SageMaker's TrainingJobName)"
        ) from None


class InvalidRequest(ValueError):
    """A value SageMaker would reject, caught before any request is sent; the message names the argument, the API
    field and the rule (taken from botocore's SageMaker service model where it has one)."""


def _check_number(argument: str, value: Any, shape: str, low: int | None = None) -> int:
    """`value` if it is an int (not a bool) that SageMaker's `shape` accepts (and at least `low`, a course rule
    stricter than the API's), else InvalidRequest naming `argument`, the shape and its range."""
    meta = _api_model().shape_for(shape).metadata
    low = max(meta.get("min", 0), low if low is not None else meta.get("min", 0))
    high = meta.get("max")
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"within [{low}, {high}]" if high is not None else f"of at least {low}"
        raise InvalidRequest(f"{argument} must be a whole number {allowed} (SageMaker's {shape}), got {value!r}")
    return value


def _check_text(argument: str, value: Any, shape: str) -> str:
    """`value` if it is a string that fits SageMaker's `shape` (length and pattern), else InvalidRequest naming
    `argument`, the shape and its rule."""
    meta = _api_model().shape_for(shape).metadata
    if (
        not isinstance(value, str)
        or not meta.get("min", 0) <= len(value) <= meta.get("max", len(value))
        or ("pattern" in meta and not re.fullmatch(meta["pattern"], value))
    ):
        length = f"{meta.get('min', 0)}-{meta['max']} characters" if "max" in meta else "text"
        raise InvalidRequest(
            f"{argument} must be {length} matching {meta.get('pattern', '.*')} (SageMaker's {shape}), got {value!r}"
        )
    return value


def _check_s3_uri(argument: str, value: Any, hint: str) -> str:
    """`value` if it is an s3:// URI SageMaker accepts (S3Uri: at most 1,024 characters), else InvalidRequest; `hint`
    says where a right one comes from. SageMaker reads channels and syncs checkpoints only with S3, so a local path
    (which it cannot see) or an https:// URL is refused."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{argument} is required: an s3://bucket/prefix URI, got {value!r}; {hint}")
    if not value.startswith("s3://") or len(value) <= len("s3://"):
        raise InvalidRequest(
            f"{argument} must be an s3://bucket/prefix URI, got {value!r}: the job runs on AWS and "
            f"cannot see this machine's files; {hint}"
        )
    return _check_text(argument, value, "S3Uri")


def _check_hyperparameters(hyperparameters: Any) -> dict[str, Any]:
    """`hyperparameters` if SageMaker accepts them as a job's HyperParameters (at most 100; keys of at most 256
    characters, values of at most 2,500 once written as text), else InvalidRequest. None values are refused: the
    training program would receive the text "None"."""
    if not isinstance(hyperparameters, dict):
        raise InvalidRequest(f"hyperparameters must be a dict of flag name to value, got {hyperparameters!r}")
    limit = _api_model().shape_for("HyperParameters").metadata["max"]
    if len(hyperparameters) > limit:
        raise InvalidRequest(
            f"{len(hyperparameters)} hyperparameters: SageMaker's HyperParameters holds at most {limit}"
        )
    for key, value in hyperparameters.items():
        _check_text("hyperparameter name", key, "HyperParameterKey")
        if value is None:
            raise InvalidRequest(f"hyperparameter {key!r} is None: give it a value, or leave it out for the default")
        _check_text(f"hyperparameter {key!r}", str(value), "HyperParameterValue")
    return hyperparameters


def container_image(instance_type: str, region: str = DEFAULT_REGION, scope: str = "training") -> str:
    """The AWS Deep Learning Container image URI for `instance_type` and `scope` (training or inference) from the
    SDK's offline image table: PyTorch images on CPU and GPU instances, Neuron images on Trainium and Inferentia."""
    from sagemaker.core import image_uris

    family = instance_type.split(".")[1]
    if family.startswith("trn") and scope == "training":
        return image_uris.retrieve(
            "pytorch",
            region=region,
            version=NEURON_TRAINING_PYTORCH,
            py_version="py38",
            instance_type=instance_type,
            image_scope=scope,
        )
    if family.startswith(("trn", "inf")):
        return image_uris.retrieve(
            "huggingface",
            region=region,
            version=NEURON_TRANSFORMERS,
            py_version="py310",
            base_framework_version=NEURON_INFERENCE_PYTORCH,
            inference_tool="neuronx",
            instance_type=instance_type,
            image_scope=scope,
        )
    return image_uris.retrieve(
        "pytorch",
        region=region,
        version=PYTORCH_VERSION,
        py_version=PYTHON_VERSION,
        instance_type=instance_type,
        image_scope=scope,
    )


def _strip_empty(value: Any) -> Any:
    """moto answers some describe calls with empty `{}` structures that sagemaker-core's models reject."""
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value


@dataclass
class Connection:
    """A SageMaker session and how it was made. `requests` holds (operation, parameters) for every SageMaker call."""

    session: Any  # sagemaker.core.helper.session_helper.Session
    role: str
    region: str
    offline: bool
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _emulator: Any = None
    _saved_environment: dict[str, str | None] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "offline (moto emulator: requests validated, nothing runs)" if self.offline else "live (AWS)"

    def last_request(self, operation: str) -> dict[str, Any]:
        """The parameters of the latest `operation` call (for example CreateTrainingJob), as sent."""
        for name, parameters in reversed(self.requests):
            if name == operation:
                return parameters
        raise LookupError(f"no {operation} request was made; calls so far: {[n for n, _ in self.requests]}")

    def close(self) -> None:
        """Stop the emulator and put back the environment variables offline mode set; a no-op live."""
        global _active_offline
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        _set_environment(self._saved_environment)
        self._saved_environment = {}
        if _active_offline is self:
            _active_offline = None


_active_offline: Connection | None = None  # one emulator at a time: connecting again closes the previous one


EC2_MARKERS = (("/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2"), ("/sys/hypervisor/uuid", "ec2"))


def on_ec2() -> bool:
    """Whether this machine says it is an EC2 instance (SageMaker notebook instances are), read from local files as
    AWS's "Identify EC2 Linux instances" guide describes: the DMI system vendor "Amazon EC2" (Nitro and bare metal)
    or a Xen hypervisor UUID starting with "ec2". False elsewhere, and on Windows and macOS (no such files)."""
    for path, prefix in EC2_MARKERS:
        try:
            if Path(path).read_text(errors="replace").strip().startswith(prefix):
                return True
        except OSError:
            continue
    return False


def has_aws_credentials() -> bool:
    """True when boto3's credential chain finds credentials (environment, ~/.aws profiles, SSO, credential process,
    a container role as on SageMaker Studio or ECS): that is live mode.

    The chain's last step asks the EC2 instance metadata address (169.254.169.254) for an instance role. Off EC2 no
    one answers there, and where the network drops the packets (many laptops) boto3 waits for its timeouts: 2.0 s
    per check, measured with a local socket that never answers standing in for the address. So that step runs only
    when `on_ec2()` says this is an instance, where the address answers in milliseconds; elsewhere the check takes
    about 20 ms. (On an EC2 instance running Windows or macOS, pass `offline=False` to `connect` to use its role.)"""
    session = botocore.session.get_session()
    resolver = session.get_component("credential_provider")
    if not on_ec2():
        resolver.remove("iam-role")
    try:
        return resolver.load_credentials() is not None
    except botocore.exceptions.BotoCoreError:
        return False


def connect(role: str | None = None, region: str | None = None, offline: bool | None = None) -> Connection:
    """A SageMaker session, live when AWS credentials exist and offline otherwise (or as forced by `offline`).

    Live mode needs an IAM role SageMaker can assume: `role`, else $SAGEMAKER_ROLE_ARN; without one this fails
    here, before any request. Offline mode starts moto's emulator (fake credentials, S3 and SageMaker in memory)
    until `Connection.close()`; its role is a placeholder in moto's account."""
    global _active_offline
    if _active_offline is not None:  # its fake credentials would otherwise look like real ones
        _active_offline.close()
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    offline = not has_aws_credentials() if offline is None else offline
    role = role or (OFFLINE_ROLE if offline else os.environ.get(ROLE_VARIABLE))
    if not role:
        raise ValueError(
            f"live mode needs an IAM role for SageMaker: pass role='arn:aws:iam::<account>:role/<name>' or set "
            f"{ROLE_VARIABLE} (or run without credentials for offline mode)"
        )
    if not re.fullmatch(r"arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@/-]+", role):
        raise ValueError(f"{role!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
    emulator, saved = None, {}
    if offline:
        from moto import mock_aws

        settings = {
            "AWS_ACCESS_KEY_ID": "offline",
            "AWS_SECRET_ACCESS_KEY": "offline",
            "AWS_SESSION_TOKEN": None,
            "AWS_DEFAULT_REGION": region,
            "SAGEMAKER_VALIDATE_ROLE": "false",
        }
        saved = _set_environment(settings)
        emulator = mock_aws()
        emulator.start()
    from sagemaker.core.helper.session_helper import Session

    boto_session = boto3.Session(region_name=region)
    connection = Connection(
        session=None, role=role, region=region, offline=offline, _emulator=emulator, _saved_environment=saved
    )
    if offline:
        _active_offline = connection

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        connection.requests.append((model.name, json.loads(json.dumps(params, default=str))))

    boto_session.events.register("provide-client-params.sagemaker.*", record)
    if offline:
        boto_session.events.register("after-call.sagemaker.*", lambda parsed, **_: parsed.update(_strip_empty(parsed)))
    connection.session = Session(boto_session=boto_session)
    return connection


@contextmanager
def offline_sagemaker(region: str = DEFAULT_REGION) -> Iterator[Connection]:
    """`connect(offline=True)` as a context manager that always stops the emulator."""
    connection = connect(region=region, offline=True)
    try:
        yield connection
    finally:
        connection.close()


def upload_channel(connection: Connection, folder: str | Path, prefix: str) -> str:
    """Upload a local folder to the session's default bucket under `prefix`; returns its s3:// URI (a channel)."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise InvalidRequest(f"prefix must name the folder in the bucket (like 'course/shards'), got {prefix!r}")
    if not isinstance(folder, (str, Path)) or not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: write the training data first")
    return connection.session.upload_data(str(folder), key_prefix=prefix)


def spot_stopping_condition(max_run_seconds: int, max_wait_seconds: int | None = None) -> Any:
    """StoppingCondition for managed spot training: MaxRuntimeInSeconds caps compute time, MaxWaitTimeInSeconds caps
    compute plus time spent waiting for spot capacity (and restarting after interruptions), so it must be at least
    the run time. Default wait: twice the run time."""
    from sagemaker.core.training.configs import StoppingCondition

    _check_number("max_run_seconds", max_run_seconds, "MaxRuntimeInSeconds")
    if max_wait_seconds is None:
        max_wait_seconds = 2 * max_run_seconds
    _check_number("max_wait_seconds", max_wait_seconds, "MaxWaitTimeInSeconds")
    if max_wait_seconds < max_run_seconds:
        raise InvalidRequest(
            f"max wait ({max_wait_seconds} s) must be at least max run ({max_run_seconds} s): it "
            "counts the run itself plus time waiting for spot capacity"
        )
    return StoppingCondition(max_runtime_in_seconds=max_run_seconds, max_wait_time_in_seconds=max_wait_seconds)


def gpt_trainer(
    connection: Connection,
    source_dir: str | Path,
    hyperparameters: dict[str, Any],
    instance_type: str = "ml.g5.xlarge",
    instance_count: int = 1,
    processes_per_host: int | None = None,
    spot: bool = False,
    max_run_seconds: int = 3600,
    max_wait_seconds: int | None = None,
    warm_pool_seconds: int = 0,
    checkpoint_s3_uri: str | None = None,
    image: str | None = None,
    base_job_name: str = "course-gpt",
    install_requirements: bool = True,
    health_check: bool | None = None,
    retries: int = 0,
) -> Any:
    """A ModelTrainer for the course's training program (`train.py` in `source_dir`, staged by
    `utils.sagemaker_local.stage_source`) under torchrun: `instance_count` hosts x `processes_per_host` ranks (default:
    one per GPU), metrics scraped from its `key=value;` lines, checkpoints synced between /opt/ml/checkpoints and S3
    (needed for spot: a restarted job resumes from them). Everything is checked before any request, against SageMaker's
    API model where it states the rule (InvalidRequest names the argument and the rule): instance type, job name,
    instance count, processes per host, run and spot wait times (wait >= run, and only with spot), warm pool length
    and that warm pools are not combined with spot (SageMaker refuses that combination), retries, an s3://
    checkpoint URI, and the hyperparameters (no None values, SageMaker's sizes). `image` defaults to the PyTorch DLC for
    the instance; `install_requirements` makes the container pip-install requirements-container.txt first (not needed
    with the course image from container/Dockerfile). `health_check` asks SageMaker to test the instances' hardware and
    the network between them before training (InfraCheckConfig; default: on for multi-instance jobs); `retries` restarts
    a job that fails with an internal error up to that many times (RetryStrategy, 1-30), resuming from its
    checkpoints."""
    from sagemaker.core.shapes import InfraCheckConfig, RetryStrategy
    from sagemaker.core.training.configs import CheckpointConfig, Compute, SourceCode, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    validate_instance_type(instance_type)
    validate_job_name(base_job_name)
    if len(base_job_name) > 47:
        raise InvalidRequest(
            f"base job name {base_job_name!r} is over 47 characters; the SDK adds a 15-character suffix"
        )
    _check_hyperparameters(hyperparameters)
    _check_number("instance_count", instance_count, "TrainingInstanceCount", low=1)
    if processes_per_host is not None and (
        isinstance(processes_per_host, bool) or not isinstance(processes_per_host, int) or processes_per_host < 1
    ):
        raise InvalidRequest(
            f"processes_per_host must be a whole number of at least 1 (torchrun's --nproc-per-node), "
            f"or None for one per GPU; got {processes_per_host!r}"
        )
    _check_number("max_run_seconds", max_run_seconds, "MaxRuntimeInSeconds")
    if max_wait_seconds is not None and not spot:
        raise InvalidRequest(
            "max_wait_seconds bounds the wait for spot capacity (MaxWaitTimeInSeconds) and applies "
            "only with spot=True; drop it or set spot=True"
        )
    if retries != 0:
        _check_number("retries", retries, "MaximumRetryAttempts")
    _check_number("warm_pool_seconds", warm_pool_seconds, "KeepAlivePeriodInSeconds")
    if spot and warm_pool_seconds:
        raise InvalidRequest(
            "SageMaker warm pools cannot be used with spot instances: choose spot or warm_pool_seconds"
        )
    if checkpoint_s3_uri is not None:
        _check_s3_uri("checkpoint_s3_uri", checkpoint_s3_uri, "SageMaker syncs /opt/ml/checkpoints with S3 only")
    if not isinstance(source_dir, (str, Path)):
        raise InvalidRequest(
            f"source_dir is required: the folder utils.sagemaker_local.stage_source made, got {source_dir!r}"
        )
    if not (Path(source_dir) / "train.py").is_file():
        raise FileNotFoundError(f"{source_dir}/train.py not found: stage it with utils.sagemaker_local.stage_source")
    requirements = "requirements-container.txt" if install_requirements else None
    stopping = (
        spot_stopping_condition(max_run_seconds, max_wait_seconds)
        if spot
        else StoppingCondition(max_runtime_in_seconds=max_run_seconds)
    )
    checkpoints = CheckpointConfig(s3_uri=checkpoint_s3_uri, local_path=CHECKPOINTS_IN_CONTAINER)
    compute = Compute(
        instance_type=instance_type,
        instance_count=instance_count,
        enable_managed_spot_training=spot,
        keep_alive_period_in_seconds=warm_pool_seconds or None,
    )
    trainer = ModelTrainer(
        sagemaker_session=connection.session,
        role=connection.role,
        base_job_name=base_job_name,
        training_image=image or container_image(instance_type, connection.region),
        source_code=SourceCode(source_dir=str(source_dir), entry_script="train.py", requirements=requirements),
        distributed=Torchrun(process_count_per_node=processes_per_host),
        compute=compute,
        stopping_condition=stopping,
        checkpoint_config=checkpoints,
        hyperparameters=dict(hyperparameters),
    )
    if health_check if health_check is not None else instance_count > 1:
        trainer = trainer.with_infra_check_config(InfraCheckConfig(enable_infra_check=True))
    if retries:
        trainer = trainer.with_retry_strategy(RetryStrategy(maximum_retry_attempts=retries))
    return trainer.with_metric_definitions(_metric_definitions())


def _metric_definitions() -> list[Any]:
    from sagemaker.core.shapes import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]


def driver_command(trainer: Any, host_count: int | None = None) -> list[str]:
    """The command that runs inside each container of this trainer's job, computed by SageMaker's own torchrun
    driver (the SDK ships it to the job in the `sm_drivers` channel): `torchrun --nnodes=N --nproc_per_node=P
    train.py --<hyperparameter> <value> ...`; with several hosts it adds the master address and node rank, shown here
    as algo-1:7777 and rank 0 (SageMaker fills in the real ones). Lets you see, and test, what the entry point
    receives without starting a job."""
    from sagemaker.train.container_drivers.distributed_drivers import torchrun_driver

    if host_count is not None:
        _check_number("host_count", host_count, "TrainingInstanceCount", low=1)
    host_count = host_count or trainer.compute.instance_count
    process_count = trainer.distributed.process_count_per_node if trainer.distributed else 1
    container_env = {
        "SM_ENTRY_SCRIPT": trainer.source_code.entry_script,
        "SM_HPS": json.dumps(trainer.hyperparameters),
        "SM_DISTRIBUTED_CONFIG": json.dumps({"process_count_per_node": process_count}),
        "SM_HOST_COUNT": str(host_count),
        "SM_MASTER_ADDR": "algo-1",
        "SM_MASTER_PORT": "7777",
        "SM_CURRENT_HOST_RANK": "0",
    }
    saved = _set_environment(container_env)
    try:
        return torchrun_driver.create_commands()
    finally:
        _set_environment(saved)


def start_training(trainer: Any, data_s3_uri: str, channel: str = "training", wait: bool = False) -> Any:
    """Start the job (CreateTrainingJob) with one data channel; returns sagemaker-core's TrainingJob. Live with
    `wait=True` it streams the job's logs until it ends."""
    from sagemaker.core.training.configs import InputData

    _check_s3_uri("data_s3_uri", data_s3_uri, "upload the folder with upload_channel, which returns one")
    _check_text("channel", channel, "ChannelName")
    trainer.train(input_data_config=[InputData(channel_name=channel, data_source=data_s3_uri)], wait=wait, logs=wait)
    return trainer._latest_training_job


def gpt_tuner(
    trainer: Any,
    max_jobs: int = 8,
    max_parallel_jobs: int = 2,
    ranges: dict[str, list[dict[str, Any]]] | None = None,
    objective: str = "validation:loss",
    strategy: str = "Bayesian",
    early_stopping: bool = False,
    max_resource: int | None = None,
) -> Any:
    """A HyperparameterTuner for the trainer's program, minimising `objective` (a metric of `METRIC_DEFINITIONS`,
    scraped from its lines; by default `validation:loss`, the program's `val_loss` on held-out shards, since the
    training loss would reward settings that memorise: `start_tuning` sends the validation channel it needs).
    `ranges` are SageMaker `ParameterRanges` as the API takes them (`utils.tuning.parameter_ranges` writes them from
    the search space a local Optuna study uses, notebook 07); the default is the learning rate (log scale,
    1e-4..3e-3) and warm-up (0..50 steps). `strategy` is Bayesian, Random, Grid or Hyperband;
    `early_stopping` lets SageMaker stop trials that trail (TrainingJobEarlyStoppingType Auto, Bayesian and Random
    only); Hyperband stops trials itself after `max_resource` objective values at most (it counts resource in values
    of the objective logged). Tuning jobs run the older script-mode contract (the SDK sets sagemaker_program and
    uploads sourcedir.tar.gz), which the training toolkit runs. Trials run without checkpointing: SDK 3.27 sends the
    trainer's CheckpointConfig without the S3 URI it fills in for plain training jobs (botocore rejects that
    request), and one fixed URI would be shared by every trial."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.core.shapes import HyperbandStrategyConfig, HyperParameterTuningJobStrategyConfig
    from sagemaker.train.tuner import HyperparameterTuner

    _check_number("max_jobs", max_jobs, "MaxNumberOfTrainingJobs")
    _check_number("max_parallel_jobs", max_parallel_jobs, "MaxParallelTrainingJobs")
    metrics = [d["Name"] for d in METRIC_DEFINITIONS]
    if objective not in metrics:
        raise InvalidRequest(f"objective {objective!r} is not a metric the program logs: one of {', '.join(metrics)}")
    strategies = list(_api_model().shape_for("HyperParameterTuningJobStrategyType").enum)
    if strategy not in strategies:
        raise InvalidRequest(f"strategy {strategy!r}: SageMaker offers {', '.join(strategies)}")
    if strategy == "Hyperband" and (early_stopping or not max_resource or max_resource < 1):
        raise InvalidRequest(
            "Hyperband stops trials itself: pass max_resource (objective values in a full trial), "
            "and leave early_stopping off"
        )
    if ranges is None:
        parameters = {
            "lr": ContinuousParameter(1e-4, 3e-3, scaling_type="Logarithmic"),
            "warmup": IntegerParameter(0, 50),
        }
    else:
        parameters = {
            r["Name"]: ContinuousParameter(
                float(r["MinValue"]), float(r["MaxValue"]), scaling_type=r.get("ScalingType", "Auto")
            )
            for r in ranges.get("ContinuousParameterRanges", [])
        }
        parameters |= {
            r["Name"]: IntegerParameter(
                int(r["MinValue"]), int(r["MaxValue"]), scaling_type=r.get("ScalingType", "Auto")
            )
            for r in ranges.get("IntegerParameterRanges", [])
        }
        parameters |= {
            r["Name"]: CategoricalParameter(list(r["Values"])) for r in ranges.get("CategoricalParameterRanges", [])
        }
        if not parameters:
            raise InvalidRequest("ranges has no parameter: give at least one Continuous, Integer or Categorical range")
    options: dict[str, Any] = {}
    if strategy == "Hyperband":
        config = HyperbandStrategyConfig(min_resource=1, max_resource=max_resource)
        options["strategy_config"] = HyperParameterTuningJobStrategyConfig(hyperband_strategy_config=config)
    trainer.checkpoint_config = None
    return HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=objective,
        objective_type="Minimize",
        hyperparameter_ranges=parameters,
        metric_definitions=METRIC_DEFINITIONS,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        strategy=strategy,
        early_stopping_type="Auto" if early_stopping else "Off",
        base_tuning_job_name=f"{trainer.base_job_name}-tune",
        **options,
    )


def start_tuning(tuner: Any, data_s3_uri: str, validation_s3_uri: str | None = None, channel: str = "training") -> Any:
    """Start the tuning job (CreateHyperParameterTuningJob) without waiting; returns the tuner. Every trial gets the
    training shards as `channel` and, with `validation_s3_uri`, held-out shards as the `validation` channel
    ($SM_CHANNEL_VALIDATION, where the program reads the blocks behind `val_loss`; the objective `validation:loss`
    needs it). Both must be in S3 already (a local path would not reach the trials)."""
    from sagemaker.core.training.configs import InputData

    _check_s3_uri("data_s3_uri", data_s3_uri, "upload the folder with upload_channel, which returns one")
    _check_text("channel", channel, "ChannelName")
    if channel == "validation":
        raise ValueError('the training channel cannot be named "validation": that name is the held-out channel')
    inputs = [InputData(channel_name=channel, data_source=data_s3_uri)]
    if validation_s3_uri is not None:
        _check_s3_uri("validation_s3_uri", validation_s3_uri, "upload the held-out shards with upload_channel")
        inputs.append(InputData(channel_name="validation", data_source=validation_s3_uri))
    elif tuner.objective_metric_name == "validation:loss":
        raise InvalidRequest("the objective validation:loss needs held-out data: pass validation_s3_uri")
    tuner.tune(inputs=inputs, wait=False)
    return tuner


def gpt_pipeline(
    connection: Connection,
    source_dir: str | Path,
    hyperparameters: dict[str, Any],
    data_s3_uri: str,
    name: str = "course-gpt-pipeline",
    **trainer_options: Any,
) -> Any:
    """A one-step SageMaker Pipeline that trains the GPT, with the instance type as a pipeline parameter. Its
    `definition()` is the JSON SageMaker stores; `upsert(role_arn=...)` creates or updates it (CreatePipeline)."""
    from sagemaker.core.training.configs import InputData
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep

    validate_job_name(name)
    _check_s3_uri("data_s3_uri", data_s3_uri, "upload the folder with upload_channel, which returns one")
    pipeline_session = PipelineSession(boto_session=connection.session.boto_session)
    default_type = trainer_options.pop("instance_type", "ml.g5.xlarge")
    instance_type = ParameterString(name="TrainingInstanceType", default_value=default_type)
    trainer = gpt_trainer(
        connection, source_dir, hyperparameters, instance_type=instance_type.default_value, **trainer_options
    )
    trainer.sagemaker_session = pipeline_session
    trainer.compute.instance_type = instance_type
    step_args = trainer.train(input_data_config=[InputData(channel_name="training", data_source=data_s3_uri)])
    step = TrainingStep(name="TrainGPT", step_args=step_args)
    return Pipeline(name=name, parameters=[instance_type], steps=[step], sagemaker_session=pipeline_session)


def gated_pipeline(
    connection: Connection,
    source_dir: str | Path,
    hyperparameters: dict[str, Any],
    data_s3_uri: str,
    validation_s3_uri: str,
    max_validation_loss: float,
    model_group: str = "course-gpt",
    name: str = "course-gated-pipeline",
    inference_instance: str = "ml.m5.xlarge",
    **trainer_options: Any,
) -> Any:
    """Chapter 14's pipeline as SageMaker Pipelines steps (`sagemaker.mlops.workflow`): TrainGPT (the program with a
    validation channel, so it logs `val_loss`) -> ValidationGate, a ConditionStep on the job's final scraped
    `validation:loss` <= the `MaxValidationLoss` parameter -> RegisterGPT (a ModelStep that registers a version in
    the model package group `model_group`, PendingManualApproval) or ValidationLossTooHigh (a FailStep). Deployment
    is not a step: on SageMaker it follows the approval (an EventBridge rule on the package's state change), which
    is chapter 14's promotion with an approver. Returns the Pipeline; `definition()` is its JSON."""
    from sagemaker.core.training.configs import InputData
    from sagemaker.core.workflow.conditions import ConditionLessThanOrEqualTo
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import TrainingStep
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.mode.function_pointers import Mode

    validate_job_name(name)
    validate_instance_type(inference_instance, "inference")
    for argument, uri in (("data_s3_uri", data_s3_uri), ("validation_s3_uri", validation_s3_uri)):
        _check_s3_uri(argument, uri, "upload the folder with upload_channel, which returns one")
    _check_text("model_group", model_group, "ArnOrName")  # CreateModelPackage's ModelPackageGroupName
    pipeline_session = PipelineSession(boto_session=connection.session.boto_session)
    default_type = trainer_options.pop("instance_type", "ml.g5.xlarge")
    instance_type = ParameterString(name="TrainingInstanceType", default_value=default_type)
    threshold = ParameterFloat(name="MaxValidationLoss", default_value=float(max_validation_loss))
    trainer = gpt_trainer(connection, source_dir, hyperparameters, instance_type=default_type, **trainer_options)
    trainer.sagemaker_session = pipeline_session
    trainer.compute.instance_type = instance_type
    channels = [
        InputData(channel_name="training", data_source=data_s3_uri),
        InputData(channel_name="validation", data_source=validation_s3_uri),
    ]
    train = TrainingStep(name="TrainGPT", step_args=trainer.train(input_data_config=channels))
    builder = ModelBuilder(
        s3_model_data_url=train.properties.ModelArtifacts.S3ModelArtifacts,
        image_uri=container_image(inference_instance, connection.region, scope="inference"),
        role_arn=connection.role,
        sagemaker_session=pipeline_session,
        instance_type=inference_instance,
        mode=Mode.SAGEMAKER_ENDPOINT,
    )
    register = ModelStep(
        name="RegisterGPT",
        step_args=builder.register(
            model_package_group_name=model_group,
            content_types=["application/json"],
            response_types=["application/json"],
            inference_instances=[inference_instance],
            approval_status="PendingManualApproval",
        ),
    )
    too_high = FailStep(
        name="ValidationLossTooHigh", error_message=Join(on=" ", values=["final validation loss above", threshold])
    )
    val_loss = train.properties.FinalMetricDataList["validation:loss"].Value
    gate = ConditionStep(
        name="ValidationGate",
        conditions=[ConditionLessThanOrEqualTo(left=val_loss, right=threshold)],
        if_steps=[register],
        else_steps=[too_high],
    )
    return Pipeline(
        name=name, parameters=[instance_type, threshold], steps=[train, gate], sagemaker_session=pipeline_session
    )
