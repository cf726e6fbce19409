"""README's SDK v2 remote-job code, run as it stands against moto: the requests it sends.

No AWS account: moto answers SageMaker, S3 and STS in-process, and every API call is
recorded as the SDK sends it. What SageMaker itself does with them is not tested here.
"""
import json
import re
import tarfile

import pytest

from train.classify.metrics import format_line

ACCOUNT, REGION, BUCKET = "111111111111", "us-east-1", "byoc-bucket"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
TRAIN_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/pytorch-byoc-train:latest"
SERVE_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/pytorch-byoc-serve:latest"
# a metric line as the built-in trainer prints it (its own formatter), small lr included
METRIC_LINE = format_line(3, {"train_loss": 0.41, "train_acc": 0.87, "val_loss": 0.5, "val_acc": 0.8712,
                              "lr": 5e-05, "images_per_sec": 123.4})
EXPECTED_METRICS = {"train_loss": 0.41, "train_acc": 0.87, "val_loss": 0.5, "val_acc": 0.8712,
                    "lr": 5e-05, "images_per_sec": 123.4}


def check_metric_definitions(definitions):
    """Each regex, run on the trainer's own metric line, gives that metric's value."""
    found = {d["Name"]: float(re.search(d["Regex"], METRIC_LINE).group(1)) for d in definitions}
    assert found == pytest.approx(EXPECTED_METRICS), (METRIC_LINE, found)


def check_serving(api):
    """README's serving code: the model on our serving image, its endpoint config and endpoint."""
    (model,) = api.sent("CreateModel")
    assert model["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/models/pets/output/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE and model["ModelName"] == "pets"
    (config,) = api.sent("CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == "pets" and variant["InstanceType"] == "ml.c5.xlarge"
    assert variant["InitialInstanceCount"] == 1
    (endpoint,) = api.sent("CreateEndpoint")
    assert endpoint["EndpointName"] == "pets" and endpoint["EndpointConfigName"] == config["EndpointConfigName"]


@pytest.fixture
def src(tmp_path, monkeypatch):
    """The `src` folder README's code names, in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('train')\n")
    (tmp_path / "src" / "train_horovod.py").write_text("print('horovod')\n")
    (tmp_path / "src" / "requirements.txt").write_text("timm\n")
    return tmp_path / "src"


@pytest.mark.slow  # the SDK's import and moto: about 30 s on 2 busy cores
@pytest.mark.timeout(180)
def test_readme_sdk2_code_sends_what_it_claims(sagemaker_api, readme_snippet, src):
    import boto3
    import sagemaker

    assert sagemaker.__version__.startswith("2."), sagemaker.__version__
    exec(readme_snippet("remote-sdk2"), {"account": ACCOUNT, "region": REGION, "role": ROLE, "bucket": BUCKET})

    builtin, ddp, hvd = sagemaker_api.sent("CreateTrainingJob")
    # the built-in trainer: our image, hyperparameters, spot + checkpoints, metrics, TensorBoard
    spec = builtin["AlgorithmSpecification"]
    assert spec["TrainingImage"] == TRAIN_IMAGE and "ContainerEntrypoint" not in spec
    # a plain Estimator sends str(value); train decodes JSON where it can, so 20 is an int again
    assert builtin["HyperParameters"] == {"arch": "resnet50", "epochs": "20"}
    assert builtin["EnableManagedSpotTraining"] is True
    assert builtin["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 129600}
    assert builtin["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/pets"
    check_metric_definitions(spec["MetricDefinitions"])
    assert builtin["TensorBoardOutputConfig"] == {"S3OutputPath": f"s3://{BUCKET}/tensorboard",
                                                  "LocalPath": "/opt/ml/output/tensorboard"}
    assert builtin["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/pets/train"
    assert builtin["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"

    # script mode: the image runs `train`, which reads these (sagemaker_* as train's launcher wants them)
    s3 = boto3.client("s3", region_name=REGION)
    for job, program, launcher in ((ddp, "train.py", {"sagemaker_torch_distributed_enabled": True}),
                                   (hvd, "train_horovod.py", {"sagemaker_mpi_enabled": True,
                                                              "sagemaker_mpi_num_of_processes_per_host": 4})):
        assert job["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
        assert "ContainerEntrypoint" not in job["AlgorithmSpecification"]
        hps = {k: json.loads(v) for k, v in job["HyperParameters"].items()}
        assert hps["epochs"] == 20 and hps["sagemaker_program"] == program
        for name, value in launcher.items():
            assert hps[name] == value, (name, hps)
        assert job["ResourceConfig"]["InstanceCount"] == 2
        # the source folder went to S3 as sourcedir.tar.gz, where train downloads it from
        bucket, _, key = hps["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
        archive = src.parent / "downloaded.tar.gz"
        s3.download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            assert program in tar.getnames()
    assert "sagemaker_mpi_enabled" not in ddp["HyperParameters"]
    assert "sagemaker_torch_distributed_enabled" not in hvd["HyperParameters"]

    check_serving(sagemaker_api)
