"""utils.bias_jobs: Clarify's pre-training bias job and Model Monitor's bias-drift schedule, sent to moto's emulator
with botocore's validation on; bad arguments are refused before any request."""

import json
import re

import pytest
from botocore.exceptions import ParamValidationError

from utils import bias_jobs as BJ
from utils.sagemaker_jobs import InvalidRequest, offline_sagemaker

HEADERS = ["genre", "mentions_women", "play"]


@pytest.fixture(scope="module")
def aws():
    with offline_sagemaker() as connection:
        connection.bucket = f"s3://{connection.session.default_bucket()}"
        yield connection


def test_pretraining_job_request_runs_the_clarify_container_on_the_data(aws):
    out = BJ.clarify_pretraining_job(
        aws,
        f"{aws.bucket}/bias/data.csv",
        f"{aws.bucket}/bias/report",
        HEADERS,
        "genre",
        "mentions_women",
        [1],
        ["comedy"],
        group="play",
    )
    config, request = out["analysis_config"], out["request"]
    assert config["facet"] == [{"name_or_index": "mentions_women", "value_or_threshold": [1]}]
    assert config["label_values_or_threshold"] == ["comedy"] and config["group_variable"] == "play"
    assert config["methods"]["pre_training_bias"] == {"methods": "all"} and config["dataset_type"] == "text/csv"
    assert re.fullmatch(
        r"\d+\.dkr\.ecr\.us-east-1\.amazonaws\.com/sagemaker-clarify-processing:.+",
        request["AppSpecification"]["ImageUri"],
    )
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    assert inputs["dataset"] == f"{aws.bucket}/bias/data.csv"
    bucket, key = inputs["analysis_config"].removeprefix("s3://").split("/", 1)
    assert json.loads(aws.session.read_s3_file(bucket, key)) == config  # what the container will read
    assert request["ProcessingJobName"] == "course-bias-pretraining"


def test_bias_drift_schedule_is_daily_and_validated(aws):
    out = BJ.bias_drift_schedule(
        aws,
        "course-digits",
        f"{aws.bucket}/truth",
        f"{aws.bucket}/monitor",
        ["label", "marked"],
        "label",
        "marked",
        [1],
        [7],
    )
    assert out["emulated_schedule"] is True  # moto has no CreateMonitoringSchedule; botocore validated it first
    schedule = out["schedule"]["MonitoringScheduleConfig"]
    assert schedule["MonitoringType"] == "ModelBias" and schedule["ScheduleConfig"]["ScheduleExpression"] == (
        "cron(0 0 ? * * *)"
    )
    definition = out["job_definition"]
    assert schedule["MonitoringJobDefinitionName"] == definition["JobDefinitionName"]
    assert definition["ModelBiasJobInput"]["EndpointInput"]["EndpointName"] == "course-digits"
    assert definition["ModelBiasJobInput"]["GroundTruthS3Input"]["S3Uri"] == f"{aws.bucket}/truth"
    facet = [{"name_or_index": "marked", "value_or_threshold": [1]}]
    assert out["analysis_config"] == {
        "label_values_or_threshold": [7],
        "label": "label",
        "facet": facet,
        "headers": ["label", "marked"],
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"instance_type": "ml.m5.huge"}, "processing instance type"),
        ({"facet": "gender"}, "not in headers"),
        ({"methods": ["CI", "XYZ"]}, "Clarify's metrics"),
        ({"data_s3_uri": "/local/data.csv"}, "s3://"),
        ({"positive_labels": []}, "at least one value"),
        ({"job_name": "bad_name"}, "job name"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(aws, changes, message):
    arguments = {
        "data_s3_uri": f"{aws.bucket}/d.csv",
        "output_s3_uri": f"{aws.bucket}/out",
        "headers": HEADERS,
        "label": "genre",
        "facet": "mentions_women",
        "facet_values": [1],
        "positive_labels": ["comedy"],
    }
    before = len(aws.requests)
    with pytest.raises(InvalidRequest, match=message):
        BJ.clarify_pretraining_job(aws, **(arguments | changes))
    assert len(aws.requests) == before


def test_validate_request_reports_what_botocore_would_refuse():
    with pytest.raises(ParamValidationError, match="MonitoringScheduleConfig"):
        BJ.validate_request("CreateMonitoringSchedule", {"MonitoringScheduleName": "x"})
