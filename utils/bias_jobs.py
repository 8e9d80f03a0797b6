"""SageMaker Clarify bias jobs, with or without AWS: a pre-training bias processing job (the data metrics that
`utils.bias` writes out, computed by Clarify's container over a CSV in S3) and a Model Monitor schedule that
recomputes the post-training bias metrics of an endpoint's predictions every day (bias drift).

Defined for notebook 11 (book chapter 11). Depends on `utils.sagemaker_jobs` (the live-or-offline `Connection`,
whose offline mode sends every request to moto's emulator after botocore validated it against SageMaker's API
model); the SageMaker SDK is imported inside the functions. Both builders check their arguments first and raise
`InvalidRequest` naming the argument; the SDK checks a processing job's `analysis_config.json` against its schema
for Clarify's container before uploading it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import botocore.session
from botocore.validate import validate_parameters

from utils.sagemaker_jobs import Connection, InvalidRequest, validate_job_name

#: Clarify's metric names (SageMaker documentation, "Measure pre-training bias" and "Measure post-training data and
#: model bias"); a method list outside these is refused before any request.
PRETRAINING_METHODS = ("CI", "DPL", "KL", "JS", "LP", "TVD", "KS", "CDDL")
POSTTRAINING_METHODS = ("DPPL", "DI", "DCA", "DCR", "RD", "DAR", "DRR", "AD", "CDDPL", "TE", "FT")


def _sagemaker_model() -> Any:
    return botocore.session.get_session().get_service_model("sagemaker")


def validate_request(operation: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate `parameters` for SageMaker `operation` (e.g. CreateMonitoringSchedule) against the API model, as
    botocore does before sending; raises botocore's ParamValidationError listing every problem. Returns them."""
    validate_parameters(parameters, _sagemaker_model().operation_model(operation).input_shape)
    return parameters


def _check_instance_type(instance_type: str) -> None:
    valid = _sagemaker_model().shape_for("ProcessingInstanceType").enum
    if instance_type not in valid:
        raise InvalidRequest(f"{instance_type!r} is not a SageMaker processing instance type (e.g. ml.m5.xlarge)")


def _check_s3(argument: str, uri: Any) -> None:
    if not isinstance(uri, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", uri):
        raise InvalidRequest(f"{argument} must be an s3://bucket/key URI, got {uri!r}")


def _check_methods(methods: str | list[str], known: tuple[str, ...], argument: str) -> None:
    if methods == "all":
        return
    unknown = [m for m in methods if m not in known] if isinstance(methods, list) else [methods]
    if unknown or not methods:
        raise InvalidRequest(f"{argument}: {unknown or 'empty list'} not among Clarify's metrics {known} (or 'all')")


def _bias_config(
    headers: list[str], label: str, facet: str, facet_values: list[Any], positive_labels: list[Any], group: str | None
) -> Any:
    from sagemaker.core.clarify import BiasConfig

    missing = [name for name in (label, facet, group) if name is not None and name not in headers]
    if missing:
        raise InvalidRequest(f"columns {missing} are not in headers {headers}: label, facet and group must be columns")
    if not positive_labels or not facet_values:
        raise InvalidRequest("positive_labels and facet_values need at least one value each")
    return BiasConfig(
        label_values_or_threshold=list(positive_labels),
        facet_name=facet,
        facet_values_or_threshold=list(facet_values),
        group_name=group,
    )


def clarify_pretraining_job(
    connection: Connection,
    data_s3_uri: str,
    output_s3_uri: str,
    headers: list[str],
    label: str,
    facet: str,
    facet_values: list[Any],
    positive_labels: list[Any],
    group: str | None = None,
    methods: str | list[str] = "all",
    instance_type: str = "ml.m5.xlarge",
    job_name: str = "course-bias-pretraining",
) -> dict[str, Any]:
    """Start Clarify's pre-training bias job (CreateProcessingJob with the Clarify container) on a headed CSV at
    `data_s3_uri`: `facet` is the column whose `facet_values` form facet d, `positive_labels` the outcomes counted
    as positive, `group` the column CDDL conditions on. Returns {"analysis_config": the JSON Clarify reads,
    "request": the CreateProcessingJob parameters as sent}. Live, this starts a billed job (minutes on one
    ml.m5.xlarge); offline the emulator records it and nothing runs."""
    from sagemaker.core.clarify import DataConfig, SageMakerClarifyProcessor

    _check_instance_type(instance_type)
    validate_job_name(job_name)
    _check_s3("data_s3_uri", data_s3_uri)
    _check_s3("output_s3_uri", output_s3_uri)
    _check_methods(methods, PRETRAINING_METHODS, "methods")
    bias_config = _bias_config(headers, label, facet, facet_values, positive_labels, group)
    data_config = DataConfig(
        s3_data_input_path=data_s3_uri,
        s3_output_path=output_s3_uri,
        label=label,
        headers=list(headers),
        dataset_type="text/csv",
    )
    processor = SageMakerClarifyProcessor(
        role=connection.role, instance_count=1, instance_type=instance_type, sagemaker_session=connection.session
    )
    processor.run_pre_training_bias(
        data_config, bias_config, methods=methods, wait=False, logs=False, job_name=job_name
    )
    return {
        "analysis_config": processor._last_analysis_config,
        "request": connection.last_request("CreateProcessingJob"),
    }


def bias_drift_schedule(
    connection: Connection,
    endpoint_name: str,
    ground_truth_s3_uri: str,
    output_s3_uri: str,
    headers: list[str],
    label: str,
    facet: str,
    facet_values: list[Any],
    positive_labels: list[Any],
    probability_threshold: float = 0.5,
    instance_type: str = "ml.m5.xlarge",
    schedule_name: str = "course-bias-drift",
) -> dict[str, Any]:
    """Model Monitor's bias drift check: a daily schedule (cron(0 0 ? * * *)) that joins an endpoint's captured
    predictions with the ground truth uploaded to `ground_truth_s3_uri` and recomputes Clarify's post-training
    metrics, flagging those outside the constraints (from a baseline job). Returns {"analysis_config",
    "job_definition" (CreateModelBiasJobDefinition parameters), "schedule" (CreateMonitoringSchedule parameters),
    "emulated_schedule": False live; offline, moto implements the job definition but not the schedule call, so
    that request is validated by botocore and refused by the emulator (the SDK then deletes the definition, as it
    does after any failure), and this returns True}."""
    from sagemaker.core.model_monitor import (
        BiasAnalysisConfig,
        CronExpressionGenerator,
        EndpointInput,
        ModelBiasMonitor,
    )

    _check_instance_type(instance_type)
    validate_job_name(schedule_name)
    validate_job_name(endpoint_name)
    _check_s3("ground_truth_s3_uri", ground_truth_s3_uri)
    _check_s3("output_s3_uri", output_s3_uri)
    if not 0 < probability_threshold < 1:
        raise InvalidRequest(f"probability_threshold must be in (0, 1), got {probability_threshold}")
    bias_config = _bias_config(headers, label, facet, facet_values, positive_labels, None)
    analysis = BiasAnalysisConfig(bias_config, headers=list(headers), label=label)
    monitor = ModelBiasMonitor(
        role=connection.role, instance_count=1, instance_type=instance_type, sagemaker_session=connection.session
    )
    endpoint = EndpointInput(
        endpoint_name=endpoint_name,
        destination="/opt/ml/processing/input/endpoint",
        probability_threshold_attribute=probability_threshold,
    )
    emulated = False
    try:
        monitor.create_monitoring_schedule(
            endpoint_input=endpoint,
            ground_truth_input=ground_truth_s3_uri,
            analysis_config=analysis,
            output_s3_uri=output_s3_uri,
            monitor_schedule_name=schedule_name,
            schedule_cron_expression=CronExpressionGenerator.daily(),
        )
    except NotImplementedError:
        if not connection.offline:
            raise
        emulated = True
    schedule = validate_request("CreateMonitoringSchedule", connection.last_request("CreateMonitoringSchedule"))
    definition = connection.last_request("CreateModelBiasJobDefinition")
    bucket, key = definition["ModelBiasAppSpecification"]["ConfigUri"].removeprefix("s3://").split("/", 1)
    config = json.loads(connection.session.read_s3_file(bucket, key))  # the monitor adds the data format and methods
    return {
        "analysis_config": config,
        "job_definition": definition,
        "schedule": schedule,
        "emulated_schedule": emulated,
    }
