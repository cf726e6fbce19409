"""The SageMaker training contract, read once into one typed, validated object.

What SageMaker (and local mode, and a plain `docker run`) hands a training
container: files under /opt/ml, a few environment variables and the
hyperparameters. `load_contract()` reads all of it and validates it before any
work starts, so a bad hyperparameter or a missing channel fails in seconds with
a reason instead of a traceback.

Why not sagemaker_training.environment: it resolves /opt/ml and creates
directories at import time, asks boto3 for a region, validates nothing (an
empty channel or a malformed hyperparameters.json surfaces as a traceback) and
exports names such as SM_HP_BATCH-SIZE that no shell can read. The variables
built here keep its names and value formats, with shell-safe names.

Environment variables read (besides SageMaker's own):
  BYOC_ML_ROOT        root of the /opt/ml tree (default /opt/ml; tests point it
                      at a temporary directory; the rule is byoc.layout.ml_root)
  BYOC_TORCHRUN_PORT  rendezvous port of torchrun on the first host (29500)
  BYOC_STOP_GRACE_S   seconds between relaying SIGTERM and SIGKILL (110; SageMaker
                      kills the container 120 s after its SIGTERM)
  BYOC_SYNC_PORT      the job's sync port on the first host (29400), where the other
                      hosts meet it: MPI's worker hosts at the start (train.rendezvous),
                      every other multi-host job's hosts to end together
                      (train.finish_line). BYOC_MPI_SYNC_PORT is its deprecated old
                      name, still read (with a warning) when BYOC_SYNC_PORT is not set.
  BYOC_MPI_WAIT_S     how long hosts wait for each other to connect (600)
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from byoc.devices import gpu_count
from byoc import layout
from byoc.layout import ml_root
from train.errors import ContractError

log = logging.getLogger("train")

SINGLE_HOST = "algo-1"
DEFAULT_INTERFACE = "eth0"  # SageMaker's and local mode's interface name
BUILTIN_TRAINER_MODULE = "train.classify"

# sagemaker_* hyperparameters that describe the job, not a framework setting
# (sagemaker_training.params.SAGEMAKER_HYPERPARAMETERS); every other sagemaker_*
# key is a "framework parameter" (SM_FRAMEWORK_PARAMS).
JOB_HYPERPARAMETERS = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)

MPI_ENABLED = "sagemaker_mpi_enabled"
MPI_PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"
MPI_NUM_PROCESSES = "sagemaker_mpi_num_processes"
MPI_CUSTOM_OPTIONS = "sagemaker_mpi_custom_mpi_options"
TORCH_DISTRIBUTED_ENABLED = "sagemaker_torch_distributed_enabled"
PYTORCH_DDP_ENABLED = "sagemaker_pytorch_ddp_enabled"
SMDDP_ENABLED = "sagemaker_distributed_dataparallel_enabled"
KNOWN_DISTRIBUTIONS = (MPI_ENABLED, TORCH_DISTRIBUTED_ENABLED, PYTORCH_DDP_ENABLED, SMDDP_ENABLED)

# Same rule as sagemaker-training: a plain relative path inside the code dir.
SAFE_ENTRY_POINT = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")


@dataclass(frozen=True)
class Distribution:
    """How the SDK's distribution hyperparameters ask the job to be launched."""

    launcher: str = "process"  # "process", "torchrun" or "mpi"
    processes_per_host: int | None = None  # None: one per GPU, or 1 on CPU
    num_processes: int | None = None  # MPI only: total ranks, overrides hosts x per host
    custom_mpi_options: str = ""
    smddp_requested: bool = False  # asked for SageMaker's closed data-parallel library


@dataclass(frozen=True)
class Settings:
    """This image's own knobs (BYOC_* variables), validated with the rest."""

    torchrun_port: int = 29500
    stop_grace_s: float = 110.0
    sync_port: int = 29400  # where the hosts meet: train.rendezvous, train.finish_line
    mpi_wait_s: float = 600.0


@dataclass(frozen=True)
class Contract:
    """Everything the `train` executable needs to know, read and checked once."""

    root: Path
    hyperparameters: dict  # the user's, decoded (what the script gets as CLI args)
    sagemaker_hyperparameters: dict  # every sagemaker_* key, decoded
    resource_config: dict
    input_data_config: dict
    hosts: list
    current_host: str
    network_interface_name: str
    current_instance_type: str
    channels: dict  # name -> Path of input/data/<name>
    num_gpus: int
    num_cpus: int
    program: str | None  # SAGEMAKER_PROGRAM; None runs the built-in trainer
    submit_dir: str | None  # SAGEMAKER_SUBMIT_DIRECTORY as given (dir or .tar.gz)
    code_dir: Path  # where the program is (and runs from)
    code_archive: Path | None  # a .tar.gz to unpack into code_dir before running
    log_level: int
    job_name: str
    distribution: Distribution = field(default_factory=Distribution)
    settings: Settings = field(default_factory=Settings)
    code_s3_uri: str | None = None  # an s3:// source archive, downloaded then unpacked into code_dir
    # $SM_CHECKPOINT_DIR when the job sets it (a checkpoint_local_path elsewhere), else
    # <root>/checkpoints: byoc.layout's rule. None here: that rule on ``root``.
    checkpoint_dir: Path | None = None

    def __post_init__(self):
        if self.checkpoint_dir is None:
            object.__setattr__(self, "checkpoint_dir", layout.checkpoint_dir({}, self.root))

    # -- the /opt/ml layout -------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def input_config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def input_data_dir(self) -> Path:
        return self.root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    @property
    def output_intermediate_dir(self) -> Path:
        return self.root / "output" / "intermediate"

    # -- derived facts ------------------------------------------------------
    @property
    def leader_host(self) -> str:
        return self.hosts[0]

    @property
    def is_leader(self) -> bool:
        return self.current_host == self.leader_host

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def processes_per_host(self) -> int:
        """Ranks per host: as asked, else one per GPU, else one on CPU."""
        return self.distribution.processes_per_host or max(self.num_gpus, 1)

    @property
    def framework_params(self) -> dict:
        """sagemaker_* hyperparameters that are framework settings (SM_FRAMEWORK_PARAMS)."""
        return {k: v for k, v in self.sagemaker_hyperparameters.items() if k not in JOB_HYPERPARAMETERS}

    @property
    def module_name(self) -> str | None:
        """The program without .py, as sagemaker-training names it (SM_MODULE_NAME)."""
        if self.program is None:
            return BUILTIN_TRAINER_MODULE
        return self.program[:-3] if self.program.endswith(".py") else self.program

    def program_path(self) -> Path:
        """The user's entry point; call after the code archive, if any, is unpacked."""
        path = self.code_dir / str(self.program)
        if not path.is_file():
            raise ContractError(
                f"training program {self.program!r} not found in the source directory {self.code_dir}"
            )
        return path

    def user_args(self) -> list:
        """The user's hyperparameters as command-line arguments (SM_USER_ARGS)."""
        return hyperparameters_to_args(self.hyperparameters)

    def environment(self) -> dict:
        """The SM_* variables, named and formatted as sagemaker-training sets them.

        Differences, on purpose: SM_HP_* and SM_CHANNEL_* names are made
        shell-safe, and SM_CHECKPOINT_DIR is added.
        """
        env = {f"SM_{key.upper()}": env_value(value) for key, value in self._env_fields().items()}
        for name, path in self.channels.items():
            env[f"SM_CHANNEL_{shell_safe(name)}"] = str(path)
        for name, value in self.hyperparameters.items():
            env[f"SM_HP_{shell_safe(name)}"] = env_value(value)
        env["SM_CHECKPOINT_DIR"] = str(self.checkpoint_dir)
        return env

    def training_env(self) -> dict:
        """What sagemaker-training puts in SM_TRAINING_ENV: its Environment as a dict."""
        groups = self.resource_config.get("instance_groups") or []
        current_group = self.resource_config.get("current_group_name", "homogeneousCluster")
        distributed = self.distribution.launcher != "process" or self.distribution.smddp_requested
        return {
            "additional_framework_parameters": self.framework_params,
            "channel_input_dirs": {name: str(path) for name, path in self.channels.items()},
            "current_host": self.current_host,
            "current_instance_group": current_group,
            "current_instance_group_hosts": next(
                (g.get("hosts", []) for g in groups if g.get("instance_group_name") == current_group), []
            ),
            "current_instance_type": self.current_instance_type,
            "distribution_hosts": list(self.hosts),
            "distribution_instance_groups": [current_group] if distributed else [],
            "framework_module": os.environ.get("SAGEMAKER_TRAINING_MODULE"),
            "hosts": list(self.hosts),
            "hyperparameters": self.hyperparameters,
            "input_config_dir": str(self.input_config_dir),
            "input_data_config": self.input_data_config,
            "input_dir": str(self.input_dir),
            "instance_groups": [g.get("instance_group_name") for g in groups],
            "instance_groups_dict": {g.get("instance_group_name"): g for g in groups},
            "is_hetero": len(groups) > 1,
            "is_master": self.is_leader,
            "is_modelparallel_enabled": None,
            "is_smddpmprun_installed": False,
            "is_smddprun_installed": False,
            "job_name": self.job_name,
            "log_level": self.log_level,
            "master_hostname": self.leader_host,
            "model_dir": str(self.model_dir),
            "module_dir": str(self.submit_dir or self.code_dir),
            "module_name": self.module_name,
            "network_interface_name": self.network_interface_name,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": 0,
            "output_data_dir": str(self.output_data_dir),
            "output_dir": str(self.output_dir),
            "output_intermediate_dir": str(self.output_intermediate_dir),
            "resource_config": self.resource_config,
            "topology": self.resource_config.get("topology", []),
            "user_entry_point": self.program,
        }

    def _env_fields(self) -> dict:
        training_env = self.training_env()
        fields = {
            "hosts": self.hosts,
            "network_interface_name": self.network_interface_name,
            "hps": self.hyperparameters,
            "user_entry_point": self.program,
            "framework_params": self.framework_params,
            "resource_config": self.resource_config,
            "input_data_config": self.input_data_config,
            "output_data_dir": str(self.output_data_dir),
            "channels": sorted(self.channels),
            "current_host": self.current_host,
            "current_instance_type": self.current_instance_type,
            "module_name": self.module_name,
            "log_level": self.log_level,
            "input_dir": str(self.input_dir),
            "input_config_dir": str(self.input_config_dir),
            "output_dir": str(self.output_dir),
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": 0,
            "model_dir": str(self.model_dir),
            "module_dir": training_env["module_dir"],
            "training_env": training_env,
            "user_args": self.user_args(),
            "output_intermediate_dir": str(self.output_intermediate_dir),
        }
        for key in (
            "current_instance_group",
            "current_instance_group_hosts",
            "instance_groups",
            "instance_groups_dict",
            "distribution_instance_groups",
            "is_hetero",
            "framework_module",
        ):
            fields[key] = training_env[key]
        if training_env["topology"]:
            fields["topology"] = training_env["topology"]
        return fields


# -- value formatting (pure) ----------------------------------------------------


def shell_safe(name: str) -> str:
    """Upper-case, every character outside [A-Z0-9_] replaced by '_' (batch-size -> BATCH_SIZE)."""
    return re.sub(r"[^A-Z0-9_]", "_", str(name).upper())


def env_value(value) -> str:
    """A variable's value as sagemaker-training writes it: strings as-is, None empty, else compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def arg_value(value) -> str:
    """One hyperparameter as a command-line value: True/False, numbers, JSON for dicts and lists."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def hyperparameters_to_args(hyperparameters: dict) -> list:
    """`--name value` pairs sorted by name (`-n value` for one-letter names), as sagemaker-training does."""
    args = []
    for name in sorted(hyperparameters):
        args += [f"--{name}" if len(name) > 1 else f"-{name}", arg_value(hyperparameters[name])]
    return args


def decode_hyperparameter(value):
    """SageMaker passes strings; the SDK JSON-encodes each value. Decode when it parses, else keep it."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


# -- reading the files ----------------------------------------------------------


def read_json_file(path: Path, missing):
    """Parse one JSON config file; a malformed one becomes a ContractError naming file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return missing
    except (OSError, UnicodeDecodeError) as error:
        raise ContractError(f"cannot read {path.name}: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ContractError(
            f"{path.name} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def read_object(path: Path) -> dict | None:
    value = read_json_file(path, missing=None)
    if value is not None and not isinstance(value, dict):
        raise ContractError(f"{path.name} must hold a JSON object, not {type(value).__name__}")
    return value


def split_hyperparameters(raw: dict) -> tuple:
    """Decode every value; return (user's, sagemaker_*), split as sagemaker-training splits them."""
    decoded = {str(name): decode_hyperparameter(value) for name, value in raw.items()}
    is_sagemaker = lambda name: name in JOB_HYPERPARAMETERS or name.startswith("sagemaker_")  # noqa: E731
    user = {k: v for k, v in decoded.items() if not is_sagemaker(k)}
    sagemaker = {k: v for k, v in decoded.items() if is_sagemaker(k)}
    return user, sagemaker


def check_env_names_unique(user_hyperparameters: dict, channels: dict) -> None:
    """batch-size and batch_size would both become SM_HP_BATCH_SIZE: refuse rather than pick one."""
    for prefix, names in (("SM_HP_", user_hyperparameters), ("SM_CHANNEL_", channels)):
        seen = {}
        for name in sorted(names):
            other = seen.setdefault(shell_safe(name), name)
            if other != name:
                raise ContractError(
                    f"{other!r} and {name!r} would both be exported as {prefix}{shell_safe(name)}; rename one"
                )


def read_resources(path: Path) -> dict:
    """resourceconfig.json, or a single host 'algo-1' when absent (a plain docker run)."""
    config = read_object(path)
    if config is None:
        return {"current_host": SINGLE_HOST, "hosts": [SINGLE_HOST]}
    hosts = config.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ContractError("resourceconfig.json: 'hosts' must be a non-empty list of host names")
    current = config.get("current_host")
    if current not in hosts:
        raise ContractError(f"resourceconfig.json: current_host {current!r} is not one of hosts {hosts}")
    return config


def read_channels(config_dir: Path, data_dir: Path) -> tuple:
    """(inputdataconfig, {channel: path}), each declared File-mode channel checked for data.

    Without inputdataconfig.json (a plain docker run) the channels are the
    folders found under input/data.
    """
    declared = read_object(config_dir / "inputdataconfig.json")
    if declared is None:
        found = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        return {}, {name: data_dir / name for name in found}
    channels = {}
    for name, spec in declared.items():
        path = data_dir / name
        mode = spec.get("TrainingInputMode", "File") if isinstance(spec, dict) else "File"
        channels[name] = path
        if mode == "Pipe":  # data arrives in FIFOs named <channel>_<epoch>, not a folder
            continue
        if not path.is_dir():
            raise ContractError(f"channel '{name}' is declared but {path} does not exist")
        if not any(path.iterdir()):
            raise ContractError(f"channel '{name}' is declared but {path} is empty")
    return declared, channels


# -- distribution -----------------------------------------------------------------


def as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ContractError(f"hyperparameter {name} must be true or false, not {value!r}")


def as_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ContractError(f"hyperparameter {name} must be a positive integer, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ContractError(f"hyperparameter {name} must be a positive integer, not {value!r}") from None
    if number < 1:
        raise ContractError(f"hyperparameter {name} must be a positive integer, not {value!r}")
    return number


def read_distribution(sagemaker: dict) -> Distribution:
    """Pick the launcher from the SDK's sagemaker_*_enabled flags; refuse what cannot be honoured."""
    enabled = {name for name in KNOWN_DISTRIBUTIONS if as_bool(name, sagemaker.get(name, False))}
    unknown = sorted(
        name
        for name, value in sagemaker.items()
        if name.endswith("_enabled") and name not in KNOWN_DISTRIBUTIONS and value not in (False, "false", "False")
    )
    if unknown:
        raise ContractError(
            f"distribution {', '.join(unknown)} is not supported by this image "
            "(supported: torch_distributed, pytorchddp, mpi, smdistributed dataparallel)"
        )
    if MPI_ENABLED in enabled and len(enabled) > 1:
        others = ", ".join(sorted(enabled - {MPI_ENABLED}))
        raise ContractError(f"contradictory distribution: {MPI_ENABLED} together with {others}; choose one")

    per_host = sagemaker.get(MPI_PROCESSES_PER_HOST)
    total = sagemaker.get(MPI_NUM_PROCESSES)
    if MPI_ENABLED in enabled:
        launcher = "mpi"
    elif enabled:
        launcher = "torchrun"
    else:
        launcher = "process"
    return Distribution(
        launcher=launcher,
        processes_per_host=None if per_host is None else as_positive_int(MPI_PROCESSES_PER_HOST, per_host),
        num_processes=None if total is None else as_positive_int(MPI_NUM_PROCESSES, total),
        custom_mpi_options=str(sagemaker.get(MPI_CUSTOM_OPTIONS) or ""),
        smddp_requested=SMDDP_ENABLED in enabled,
    )


# -- program and code location ------------------------------------------------------


def read_program(environ: dict, sagemaker: dict) -> str | None:
    """SAGEMAKER_PROGRAM wins over sagemaker_program, as in sagemaker-training."""
    program = environ.get("SAGEMAKER_PROGRAM") or sagemaker.get("sagemaker_program")
    if program in (None, ""):
        return None
    program = str(program)
    if not SAFE_ENTRY_POINT.match(program) or "/../" in f"/{program}/" or "/./" in f"/{program}/":
        raise ContractError(
            f"training program {program!r} must be a relative path inside the source directory, "
            "e.g. train.py or bin/train.sh"
        )
    return program


def read_code_location(root: Path, environ: dict, sagemaker: dict) -> tuple:
    """(submit_dir as given, code_dir, archive to unpack or None).

    sagemaker_submit_directory wins over SAGEMAKER_SUBMIT_DIRECTORY. A folder is
    used in place; a .tar.gz is unpacked into <root>/code; an s3:// archive is
    downloaded first (see load_contract: code_s3_uri), as on remote SageMaker jobs.
    """
    default_code_dir = root / "code"
    given = sagemaker.get("sagemaker_submit_directory") or environ.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if given in (None, ""):
        return None, default_code_dir, None
    given = str(given)
    if given.startswith("s3://"):
        bucket, _, key = given[len("s3://"):].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise ContractError(f"source directory {given} must name an archive: s3://bucket/path/sourcedir.tar.gz")
        return given, default_code_dir, None
    path = Path(given.removeprefix("file://"))
    if path.is_dir():
        return given, path, None
    if path.is_file():
        return given, default_code_dir, path
    raise ContractError(f"source directory {given} does not exist")


# -- environment ----------------------------------------------------------------------


def env_number(environ: dict, name: str, default, kind):
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ContractError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ContractError(f"{name} must be positive, not {raw!r}")
    return value


def sync_port_variable(environ: dict) -> str:
    """BYOC_SYNC_PORT, or its deprecated old name BYOC_MPI_SYNC_PORT when only that is set
    (the port was never MPI's alone: the finish line of every multi-host job uses it)."""
    if environ.get("BYOC_SYNC_PORT") in (None, "") and environ.get("BYOC_MPI_SYNC_PORT") not in (None, ""):
        log.warning("BYOC_MPI_SYNC_PORT is deprecated: set BYOC_SYNC_PORT instead")
        return "BYOC_MPI_SYNC_PORT"
    if environ.get("BYOC_MPI_SYNC_PORT") not in (None, ""):
        log.warning("BYOC_MPI_SYNC_PORT is deprecated and ignored: BYOC_SYNC_PORT is set")
    return "BYOC_SYNC_PORT"


def read_settings(environ: dict) -> Settings:
    return Settings(
        torchrun_port=env_number(environ, "BYOC_TORCHRUN_PORT", 29500, int),
        stop_grace_s=env_number(environ, "BYOC_STOP_GRACE_S", 110.0, float),
        sync_port=env_number(environ, sync_port_variable(environ), 29400, int),
        mpi_wait_s=env_number(environ, "BYOC_MPI_WAIT_S", 600.0, float),
    )


def read_log_level(sagemaker: dict) -> int:
    level = sagemaker.get("sagemaker_container_log_level", 20)
    if isinstance(level, bool) or not isinstance(level, int):
        raise ContractError(f"hyperparameter sagemaker_container_log_level must be an integer, not {level!r}")
    return level


def load_contract(environ: dict | None = None, num_gpus: int | None = None) -> Contract:
    """Read and validate the whole contract; raise ContractError with a short reason."""
    environ = dict(os.environ if environ is None else environ)
    root = ml_root(environ)
    config_dir = root / "input" / "config"

    raw_hyperparameters = read_object(config_dir / "hyperparameters.json") or {}
    user, sagemaker = split_hyperparameters(raw_hyperparameters)
    resources = read_resources(config_dir / "resourceconfig.json")
    input_data_config, channels = read_channels(config_dir, root / "input" / "data")
    check_env_names_unique(user, channels)
    distribution = read_distribution(sagemaker)
    program = read_program(environ, sagemaker)
    submit_dir, code_dir, code_archive = read_code_location(root, environ, sagemaker)

    return Contract(
        root=root,
        hyperparameters=user,
        sagemaker_hyperparameters=sagemaker,
        resource_config=resources,
        input_data_config=input_data_config,
        hosts=list(resources["hosts"]),
        current_host=resources["current_host"],
        network_interface_name=str(resources.get("network_interface_name") or DEFAULT_INTERFACE),
        current_instance_type=str(resources.get("current_instance_type") or "local"),
        channels=channels,
        num_gpus=gpu_count() if num_gpus is None else num_gpus,
        num_cpus=os.cpu_count() or 1,
        program=program,
        submit_dir=submit_dir,
        code_dir=code_dir,
        code_archive=code_archive,
        code_s3_uri=submit_dir if submit_dir and submit_dir.startswith("s3://") else None,
        log_level=read_log_level(sagemaker),
        job_name=str(environ.get("TRAINING_JOB_NAME") or sagemaker.get("sagemaker_job_name") or ""),
        distribution=distribution,
        settings=read_settings(environ),
        checkpoint_dir=layout.checkpoint_dir(environ, root),
    )
