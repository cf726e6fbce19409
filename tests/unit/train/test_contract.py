"""The training contract read from a temporary /opt/ml tree."""

import json
import logging

import pytest

from train.contract import (
    ContractError,
    arg_value,
    decode_hyperparameter,
    env_value,
    hyperparameters_to_args,
    load_contract,
    shell_safe,
)


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def make_tree(root, hyperparameters=None, resources=None, channels=None, data=None):
    """An /opt/ml tree as SageMaker writes it: every hyperparameter value JSON-encoded as a string."""
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    if hyperparameters is not None:
        encoded = {k: json.dumps(v) for k, v in hyperparameters.items()}
        write_json(config / "hyperparameters.json", encoded)
    if resources is not None:
        write_json(config / "resourceconfig.json", resources)
    if channels is not None:
        write_json(config / "inputdataconfig.json", {name: {"TrainingInputMode": "File"} for name in channels})
    for name in data or []:
        folder = root / "input" / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "part-0").write_text("x")
    return root


def load(root, num_gpus=0, **environ):
    return load_contract({"BYOC_ML_ROOT": str(root), **environ}, num_gpus=num_gpus)


def reason(root, **environ):
    with pytest.raises(ContractError) as error:
        load(root, **environ)
    return str(error.value)


# -- good trees ---------------------------------------------------------------------


def test_empty_tree_is_one_host_builtin_trainer(tmp_path):
    contract = load(tmp_path)
    assert contract.hosts == ["algo-1"] and contract.current_host == "algo-1"
    assert contract.program is None and contract.module_name == "train.classify"
    assert contract.distribution.launcher == "process"
    assert contract.model_dir == tmp_path / "model"
    assert contract.checkpoint_dir == tmp_path / "checkpoints"
    assert contract.code_dir == tmp_path / "code"
    assert contract.network_interface_name == "eth0"


def test_full_tree(tmp_path):
    code = tmp_path / "src"
    code.mkdir()
    make_tree(
        tmp_path,
        hyperparameters={
            "epochs": 3,
            "lr": 0.1,
            "batch-size": 32,
            "arch": "resnet18",
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": str(code),
            "sagemaker_region": "eu-west-1",
            "sagemaker_container_log_level": 10,
        },
        resources={"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "ethwe"},
        channels=["train", "val"],
        data=["train", "val"],
    )
    contract = load(tmp_path, num_gpus=4)
    assert contract.hyperparameters == {"epochs": 3, "lr": 0.1, "batch-size": 32, "arch": "resnet18"}
    assert contract.sagemaker_hyperparameters["sagemaker_region"] == "eu-west-1"
    assert contract.program == "train.py" and contract.code_dir == code
    assert contract.channels == {"train": tmp_path / "input/data/train", "val": tmp_path / "input/data/val"}
    assert contract.node_rank == 1 and not contract.is_leader and contract.leader_host == "algo-1"
    assert contract.network_interface_name == "ethwe"
    assert contract.processes_per_host == 4
    assert contract.log_level == 10


def test_hyperparameters_not_json_encoded_are_kept_raw(tmp_path):
    write_json(tmp_path / "input/config/hyperparameters.json", {"optimizer": "adam", "n": "5", "flag": "true"})
    assert load(tmp_path).hyperparameters == {"optimizer": "adam", "n": 5, "flag": True}


def test_program_from_env_wins_over_hyperparameter(tmp_path):
    make_tree(tmp_path, hyperparameters={"sagemaker_program": "a.py"})
    assert load(tmp_path, SAGEMAKER_PROGRAM="b.py").program == "b.py"
    assert load(tmp_path).module_name == "a"


def test_submit_directory_tarball_unpacks_into_code(tmp_path):
    archive = tmp_path / "sourcedir.tar.gz"
    archive.write_bytes(b"")
    contract = load(tmp_path, SAGEMAKER_SUBMIT_DIRECTORY=str(archive))
    assert contract.code_archive == archive and contract.code_dir == tmp_path / "code"


def test_pipe_mode_channel_needs_no_folder(tmp_path):
    write_json(tmp_path / "input/config/inputdataconfig.json", {"train": {"TrainingInputMode": "Pipe"}})
    assert "train" in load(tmp_path).channels


def test_channels_found_on_disk_without_inputdataconfig(tmp_path):
    make_tree(tmp_path, data=["train"])
    assert list(load(tmp_path).channels) == ["train"]


@pytest.mark.parametrize(
    "flags, launcher",
    [
        ({}, "process"),
        ({"sagemaker_torch_distributed_enabled": True}, "torchrun"),
        ({"sagemaker_pytorch_ddp_enabled": "true"}, "torchrun"),
        ({"sagemaker_distributed_dataparallel_enabled": True}, "torchrun"),
        ({"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": 2}, "mpi"),
        ({"sagemaker_mpi_enabled": False}, "process"),
    ],
)
def test_launcher_from_distribution(tmp_path, flags, launcher):
    make_tree(tmp_path, hyperparameters=flags)
    contract = load(tmp_path)
    assert contract.distribution.launcher == launcher
    assert contract.distribution.smddp_requested == ("sagemaker_distributed_dataparallel_enabled" in flags)


def test_mpi_settings(tmp_path):
    make_tree(
        tmp_path,
        hyperparameters={
            "sagemaker_mpi_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": 2,
            "sagemaker_mpi_custom_mpi_options": "-verbose --NCCL_DEBUG WARN",
        },
    )
    contract = load(tmp_path, num_gpus=8)
    assert contract.processes_per_host == 2
    assert contract.distribution.custom_mpi_options == "-verbose --NCCL_DEBUG WARN"
    assert contract.framework_params["sagemaker_mpi_enabled"] is True


# -- bad trees: a short reason, before any work ------------------------------------------


def test_malformed_hyperparameters_names_file_and_position(tmp_path):
    write_json(tmp_path / "input/config/hyperparameters.json", '{"epochs": "3",\n "lr": }')
    message = reason(tmp_path)
    assert message.startswith("hyperparameters.json is not valid JSON")
    assert "line 2 column" in message and len(message) < 200


def test_hyperparameters_must_be_an_object(tmp_path):
    write_json(tmp_path / "input/config/hyperparameters.json", "[1, 2]")
    assert "must hold a JSON object" in reason(tmp_path)


def test_malformed_resourceconfig(tmp_path):
    write_json(tmp_path / "input/config/resourceconfig.json", "{")
    assert reason(tmp_path).startswith("resourceconfig.json is not valid JSON")


def test_current_host_not_in_hosts(tmp_path):
    make_tree(tmp_path, resources={"current_host": "algo-9", "hosts": ["algo-1"]})
    assert "algo-9" in reason(tmp_path)


def test_declared_channel_missing(tmp_path):
    make_tree(tmp_path, channels=["train", "val"], data=["train"])
    message = reason(tmp_path)
    assert "channel 'val'" in message and "does not exist" in message


def test_declared_channel_empty(tmp_path):
    make_tree(tmp_path, channels=["train"])
    (tmp_path / "input/data/train").mkdir(parents=True)
    assert reason(tmp_path) == f"channel 'train' is declared but {tmp_path}/input/data/train is empty"


def test_mpi_with_torch_distributed_is_contradictory(tmp_path):
    make_tree(tmp_path, hyperparameters={"sagemaker_mpi_enabled": True, "sagemaker_torch_distributed_enabled": True})
    assert "contradictory distribution" in reason(tmp_path)


def test_unknown_distribution_is_refused(tmp_path):
    make_tree(tmp_path, hyperparameters={"sagemaker_parameter_server_enabled": True})
    assert "sagemaker_parameter_server_enabled is not supported" in reason(tmp_path)


@pytest.mark.parametrize(
    "hyperparameters, expected",
    [
        ({"sagemaker_mpi_enabled": "yes"}, "must be true or false"),
        ({"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": 0}, "positive integer"),
        ({"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": "two"}, "positive integer"),
        ({"batch-size": 1, "batch_size": 2}, "SM_HP_BATCH_SIZE"),
        ({"sagemaker_program": "../escape.py"}, "relative path inside the source directory"),
        ({"sagemaker_program": "/abs/train.py"}, "relative path inside the source directory"),
        ({"sagemaker_submit_directory": "s3://bucket/"}, "must name an archive"),
        ({"sagemaker_submit_directory": "/nowhere/src"}, "does not exist"),
    ],
)
def test_bad_hyperparameters(tmp_path, hyperparameters, expected):
    make_tree(tmp_path, hyperparameters=hyperparameters)
    assert expected in reason(tmp_path)


def test_bad_byoc_setting(tmp_path):
    assert "BYOC_STOP_GRACE_S" in reason(tmp_path, BYOC_STOP_GRACE_S="soon")


@pytest.fixture
def train_log(caplog):
    """Warnings of the "train" logger (which `train` itself stops from propagating)."""
    logger = logging.getLogger("train")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_sync_port(tmp_path, train_log):
    assert load(tmp_path).settings.sync_port == 29400
    assert load(tmp_path, BYOC_SYNC_PORT="29411").settings.sync_port == 29411
    assert "deprecated" not in train_log.text
    assert "BYOC_SYNC_PORT" in reason(tmp_path, BYOC_SYNC_PORT="a port")


def test_old_sync_port_name_is_a_deprecated_alias(tmp_path, train_log):
    assert load(tmp_path, BYOC_MPI_SYNC_PORT="29412").settings.sync_port == 29412
    assert "BYOC_MPI_SYNC_PORT is deprecated: set BYOC_SYNC_PORT instead" in train_log.text
    assert "BYOC_MPI_SYNC_PORT" in reason(tmp_path, BYOC_MPI_SYNC_PORT="a port")


def test_new_sync_port_name_wins_over_the_old(tmp_path, train_log):
    assert load(tmp_path, BYOC_SYNC_PORT="29413", BYOC_MPI_SYNC_PORT="29412").settings.sync_port == 29413
    assert "BYOC_MPI_SYNC_PORT is deprecated and ignored" in train_log.text


# -- SM_* variables and arguments -----------------------------------------------------------


def test_environment_names_and_values(tmp_path):
    make_tree(
        tmp_path,
        hyperparameters={
            "batch-size": 32,
            "lr": 0.001,
            "layers": [64, 32],
            "opts": {"b": 1, "a": True},
            "sagemaker_program": "train.py",
            "sagemaker_mpi_enabled": False,
        },
        resources={"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "current_instance_type": "ml.g5.xlarge"},
        channels=["train", "my-val"],
        data=["train", "my-val"],
    )
    env = load(tmp_path, num_gpus=1).environment()
    assert all(name == shell_safe(name) for name in env)
    assert env["SM_HP_BATCH_SIZE"] == "32"
    assert env["SM_HP_LR"] == "0.001"
    assert env["SM_HP_LAYERS"] == "[64,32]"
    assert env["SM_HP_OPTS"] == '{"a":true,"b":1}'
    assert env["SM_CHANNEL_MY_VAL"] == f"{tmp_path}/input/data/my-val"
    assert env["SM_CHANNELS"] == '["my-val","train"]'
    assert env["SM_HOSTS"] == '["algo-1","algo-2"]'
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_CURRENT_INSTANCE_TYPE"] == "ml.g5.xlarge"
    assert env["SM_NUM_GPUS"] == "1"
    assert int(env["SM_NUM_CPUS"]) >= 1
    assert env["SM_MODEL_DIR"] == f"{tmp_path}/model"
    assert env["SM_OUTPUT_DIR"] == f"{tmp_path}/output"
    assert env["SM_OUTPUT_DATA_DIR"] == f"{tmp_path}/output/data"
    assert env["SM_INPUT_DIR"] == f"{tmp_path}/input"
    assert env["SM_INPUT_CONFIG_DIR"] == f"{tmp_path}/input/config"
    assert env["SM_CHECKPOINT_DIR"] == f"{tmp_path}/checkpoints"
    assert env["SM_MODULE_NAME"] == "train"
    assert env["SM_USER_ENTRY_POINT"] == "train.py"
    assert env["SM_MODULE_DIR"] == f"{tmp_path}/code"
    assert env["SM_NETWORK_INTERFACE_NAME"] == "eth0"
    assert env["SM_LOG_LEVEL"] == "20"
    assert json.loads(env["SM_HPS"]) == {"batch-size": 32, "lr": 0.001, "layers": [64, 32], "opts": {"a": True, "b": 1}}
    assert json.loads(env["SM_FRAMEWORK_PARAMS"]) == {"sagemaker_mpi_enabled": False}
    assert json.loads(env["SM_USER_ARGS"])[:2] == ["--batch-size", "32"]
    assert json.loads(env["SM_RESOURCE_CONFIG"])["hosts"] == ["algo-1", "algo-2"]
    assert json.loads(env["SM_INPUT_DATA_CONFIG"])["train"] == {"TrainingInputMode": "File"}
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["is_master"] is True and training_env["master_hostname"] == "algo-1"
    assert training_env["channel_input_dirs"]["train"] == f"{tmp_path}/input/data/train"
    assert training_env["hyperparameters"]["batch-size"] == 32


def test_hyperparameters_to_args():
    args = hyperparameters_to_args({"lr": 0.1, "b": True, "layers": [1, 2], "cfg": {"k": "v"}, "none": None})
    assert args == ["-b", "True", "--cfg", '{"k":"v"}', "--layers", "[1,2]", "--lr", "0.1", "--none", ""]


def test_value_helpers():
    assert decode_hyperparameter('"text"') == "text"
    assert decode_hyperparameter("plain text") == "plain text"
    assert decode_hyperparameter("false") is False
    assert env_value(None) == "" and env_value("s") == "s" and env_value(False) == "false"
    assert arg_value(False) == "False" and arg_value(3) == "3"
    assert shell_safe("batch-size.v2") == "BATCH_SIZE_V2"


def test_a_checkpoint_dir_the_job_sets_is_kept(tmp_path):
    """A job whose checkpoint_local_path is elsewhere says so with SM_CHECKPOINT_DIR: train keeps it
    (it used to overwrite it with <root>/checkpoints), and its programs get the same path."""
    contract = load(tmp_path, SM_CHECKPOINT_DIR=str(tmp_path / "ckpt"))
    assert contract.checkpoint_dir == tmp_path / "ckpt"
    assert contract.environment()["SM_CHECKPOINT_DIR"] == f"{tmp_path}/ckpt"
    assert load(tmp_path, SM_CHECKPOINT_DIR="").checkpoint_dir == tmp_path / "checkpoints"
