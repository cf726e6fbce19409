"""README's SDK v3 remote-job code, run as it stands against moto: the requests it sends.

Runs with SageMaker SDK v3 (.venv-sdk3; ./build.sh test sets it up). No AWS account: moto
answers SageMaker, S3 and STS in-process, every API call is recorded as the SDK sends it.
"""
import json

import boto3
import pytest

from test_remote_sdk2 import (ACCOUNT, BUCKET, REGION, ROLE, TRAIN_IMAGE,  # noqa: F401 (src: a fixture)
                              check_metric_definitions, check_serving, src)

DRIVER_ENTRYPOINT = ["/bin/bash"]


def s3_text(uri, name):
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"]
    return body.read().decode()


def channels(job):
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}


@pytest.fixture
def moto_describes_like_sagemaker(sagemaker_api, monkeypatch):
    """moto's Describe* answer "VpcConfig": {} / "DataCaptureConfig": {} where SageMaker leaves
    them out, and v3's resource classes (which describe what they create) reject an empty one."""
    import botocore.client

    call = botocore.client.BaseClient._make_api_call

    def without_empty_fields(client, operation, params):
        answer = call(client, operation, params)
        return {k: v for k, v in answer.items() if v != {}} if operation.startswith("Describe") else answer

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", without_empty_fields)


@pytest.mark.slow  # the SDK's import and moto: about 30 s on 2 busy cores
@pytest.mark.timeout(180)
def test_readme_sdk3_code_sends_what_it_claims(sagemaker_api, moto_describes_like_sagemaker, readme_snippet, src):
    from importlib.metadata import version

    assert version("sagemaker").startswith("3."), version("sagemaker")
    exec(readme_snippet("remote-sdk3"), {"account": ACCOUNT, "region": REGION, "role": ROLE, "bucket": BUCKET})

    builtin, ddp, hvd, drivers = sagemaker_api.sent("CreateTrainingJob")
    # the built-in trainer: our image and its own entrypoint, spot + checkpoints, metrics, TensorBoard
    spec = builtin["AlgorithmSpecification"]
    assert spec["TrainingImage"] == TRAIN_IMAGE and "ContainerEntrypoint" not in spec
    # v3 sends plain strings (v2's framework estimators JSON-encode); train reads both
    assert builtin["HyperParameters"] == {"arch": "resnet50", "epochs": "20"}
    assert builtin["EnableManagedSpotTraining"] is True
    assert builtin["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 129600}
    assert builtin["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/checkpoints/pets", "LocalPath": "/opt/ml/checkpoints"}
    check_metric_definitions([{"Name": d["Name"], "Regex": d["Regex"]} for d in spec["MetricDefinitions"]])
    assert builtin["TensorBoardOutputConfig"] == {"S3OutputPath": f"s3://{BUCKET}/tensorboard",
                                                  "LocalPath": "/opt/ml/output/tensorboard"}
    assert channels(builtin) == {"train": f"s3://{BUCKET}/pets/train"}

    # train in charge of a script: v2's hyperparameters, the source folder uploaded as a channel
    s3 = boto3.client("s3", region_name=REGION)
    for job, program, launcher in ((ddp, "train.py", {"sagemaker_torch_distributed_enabled": "true"}),
                                   (hvd, "train_horovod.py", {"sagemaker_mpi_enabled": "true",
                                                              "sagemaker_mpi_num_of_processes_per_host": "4"})):
        assert job["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
        assert "ContainerEntrypoint" not in job["AlgorithmSpecification"]
        assert job["HyperParameters"] == {"epochs": "20", "sagemaker_program": program,
                                          "sagemaker_submit_directory": "/opt/ml/input/data/code", **launcher}
        assert job["ResourceConfig"]["InstanceCount"] == 2
        bucket, _, prefix = channels(job)["code"].removeprefix("s3://").partition("/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        assert f"{prefix}/{program}" in keys, keys

    # the SDK's drivers: its bash entrypoint, the torchrun driver, requirements.txt named
    spec = drivers["AlgorithmSpecification"]
    assert spec["TrainingImage"] == TRAIN_IMAGE
    assert spec["ContainerEntrypoint"] == DRIVER_ENTRYPOINT
    assert "sm_drivers/sm_train.sh" in spec["ContainerArguments"][-1]
    assert drivers["HyperParameters"] == {"epochs": "20"}
    sm_drivers = channels(drivers)["sm_drivers"]
    assert json.loads(s3_text(sm_drivers, "sourcecode.json"))["entry_script"] == "train.py"
    script = s3_text(sm_drivers, "sm_train.sh")
    assert "distributed_drivers/torchrun_driver.py" in script and "install_requirements.py requirements.txt" in script

    check_serving(sagemaker_api)
