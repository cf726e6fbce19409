"""`train`: run a SageMaker training job in this container.

Reads the contract, prepares the code, picks a launcher, runs it with stop
signals relayed, and writes /opt/ml/output/success or .../failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from byoc.layout import ml_root
from train import finish_line, launch, netif, outcome, relay, rendezvous
from train.contract import Contract, load_contract
from train.errors import ContractError

log = logging.getLogger("train")

DESCRIPTION = "Run a SageMaker training job: script mode, or the built-in image classifier."
EPILOG = """\
What it reads (as SageMaker, local mode or `docker run` provide it):
  /opt/ml/input/config/hyperparameters.json  values JSON-decoded; the user's ones become
                                             `--name value` arguments and SM_HP_<NAME>
  /opt/ml/input/config/resourceconfig.json   hosts, current_host, network_interface_name
                                             (absent: one host, algo-1; an interface this
                                             container lacks: the one routing to the first host)
  /opt/ml/input/config/inputdataconfig.json  declared channels; each must be a non-empty
                                             folder /opt/ml/input/data/<channel>
                                             (absent: the folders found there)
  SAGEMAKER_PROGRAM / sagemaker_program      the script (or executable) to run, relative to
                                             the source directory
  SAGEMAKER_SUBMIT_DIRECTORY / sagemaker_submit_directory
                                             the source directory: a folder, or a .tar.gz
                                             (local or s3://, as remote jobs get it) unpacked
                                             into /opt/ml/code (default /opt/ml/code);
                                             its requirements.txt is pip-installed first
  BYOC_ML_ROOT                               use another folder instead of /opt/ml
  BYOC_TORCHRUN_PORT, BYOC_STOP_GRACE_S, BYOC_SYNC_PORT, BYOC_MPI_WAIT_S
                                             launcher settings (29500, 110 s, 29400, 600 s);
                                             the sync port is where the hosts of a
                                             multi-host job meet: MPI's at the start, every
                                             other launcher's to end together
                                             (BYOC_MPI_SYNC_PORT: its deprecated old name)

Launcher, from the SDK's distribution hyperparameters:
  none                                        one process per host: python <program> <args>
  sagemaker_torch_distributed_enabled,
  sagemaker_pytorch_ddp_enabled               torchrun on every host, one rank per GPU (1 on
                                             CPU), rendezvous on the first host
  sagemaker_distributed_dataparallel_enabled  SageMaker's closed library is AWS-only: torchrun
                                             and PyTorch DDP (NCCL) instead
  sagemaker_mpi_enabled                       mpirun from the first host over ssh;
                                             sagemaker_mpi_num_of_processes_per_host,
                                             sagemaker_mpi_custom_mpi_options apply

Without a program, the built-in trainer runs: python -m train.classify <args>
(see `python -m train.classify --help` for its hyperparameters).

Every program gets the SM_* variables that sagemaker-training sets (with shell-safe
names: batch-size -> SM_HP_BATCH_SIZE) plus SM_CHECKPOINT_DIR, and, as AWS's PyTorch
containers set them, MASTER_ADDR (the first host; 127.0.0.1 for one host whose name does
not resolve) and MASTER_PORT=7777 for init_process_group's env:// (values set in the
container's environment win; torchrun sets its own for its ranks). SIGTERM/SIGINT are relayed
to all processes. On failure /opt/ml/output/failure starts with the reason.
The hosts of a multi-host job end together: a host whose work is done waits until
every host's is (SageMaker waits for all hosts; local mode would stop the rest).
"""


def parse_args(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--print-plan",
        action="store_true",
        help="validate the contract, print the launcher and command, and exit without running",
    )
    return parser.parse_args(argv)


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[train] %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


# -- preparing the code ---------------------------------------------------------


def unpack_code(archive: Path, code_dir: Path) -> None:
    """Unpack the source .tar.gz into code_dir, unless code_dir already has files (as sagemaker-training)."""
    if code_dir.is_dir() and any(code_dir.iterdir()):
        log.info("%s is not empty: not unpacking %s", code_dir, archive)
        return
    code_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                # "data" filter: no absolute paths, no escaping links, no device files
                tar.extractall(code_dir, filter="data")
            else:  # Python < 3.11.4 (Debian 12's 3.11.2, the CPU image's): the same checks by hand
                tar.extractall(code_dir, members=checked_members(tar, code_dir))
    except (tarfile.TarError, OSError, ValueError) as error:
        raise ContractError(f"cannot unpack source archive {archive}: {error}") from None


def checked_members(tar: tarfile.TarFile, dest: Path) -> list:
    """The archive's members, refusing any that would land or point outside dest."""
    root = dest.resolve()

    def inside(path: Path) -> bool:
        return path.resolve().is_relative_to(root)

    for member in tar.getmembers():
        target = root / member.name
        if member.name.startswith("/") or not inside(target):
            raise ValueError(f"member {member.name!r} would be written outside {dest}")
        if member.issym() and not inside(target.parent / member.linkname):
            raise ValueError(f"link {member.name!r} points outside {dest}")
        if member.islnk() and not inside(root / member.linkname):
            raise ValueError(f"hard link {member.name!r} points outside {dest}")
        if member.isdev():
            raise ValueError(f"member {member.name!r} is a device file")
        member.mode &= 0o755  # no setuid/setgid/sticky bits, as the data filter
    return tar.getmembers()


def download_source(uri: str, dest_dir: Path) -> Path:
    """The s3:// source archive of a remote job (the SDK uploads sourcedir.tar.gz)."""
    import boto3  # installed with sagemaker-training; imported only for S3 sources
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    target = dest_dir / Path(key).name
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        boto3.client("s3").download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as error:
        raise ContractError(f"cannot download source archive {uri}: {error}") from None
    return target


def prepare_code(contract: Contract) -> None:
    if contract.code_s3_uri is not None:
        archive = download_source(contract.code_s3_uri, contract.root / "input" / "source")
        unpack_code(archive, contract.code_dir)
    if contract.code_archive is not None:
        unpack_code(contract.code_archive, contract.code_dir)
    if contract.program is not None:
        path = contract.program_path()
        if not path.name.endswith(".py") and not os.access(path, os.X_OK):
            path.chmod(path.stat().st_mode | 0o111)  # sagemaker-training makes commands executable too


def package_parent() -> str | None:
    """Where our `train` package lives, when it is not installed (a source checkout)."""
    parent = str(Path(__file__).resolve().parent.parent)
    return None if parent.endswith(("site-packages", "dist-packages")) else parent


def child_environment(environ: dict, contract: Contract, sm_env: dict, plan_env: dict) -> dict:
    """Our environment + SM_* + the launcher's defaults (the user's own settings win) + PYTHONPATH."""
    env = dict(environ)
    env.update(sm_env)
    for name, value in plan_env.items():
        env.setdefault(name, value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    paths = [str(contract.code_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent():
        paths.append(package_parent())
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def make_output_dirs(contract: Contract) -> None:
    for path in (contract.model_dir, contract.output_data_dir):
        path.mkdir(parents=True, exist_ok=True)


def working_dir(contract: Contract) -> Path:
    return contract.code_dir if contract.code_dir.is_dir() else contract.root


# -- steps that can fail --------------------------------------------------------


def fail(output_dir: Path, message: str, code: int = 1) -> int:
    first_line = message.splitlines()[0] if message else "failed"
    log.error("%s", first_line)
    if not outcome.write_failure(output_dir, message if message.endswith("\n") else message + "\n"):
        log.info("the program wrote its own %s; keeping it", output_dir / "failure")
    return code


def install_requirements(contract: Contract, env: dict) -> int:
    """pip install -r requirements.txt from the source dir; 0 when there is none or it worked."""
    requirements = contract.code_dir / "requirements.txt"
    if not requirements.is_file():
        return 0
    command = [sys.executable, "-m", "pip", "install", "--no-input", "-r", str(requirements)]
    result = relay.run_relaying_signals(command, env, contract.code_dir, contract.settings.stop_grace_s)
    if result.returncode == 0:
        return 0
    message = outcome.failure_message(
        "pip install -r requirements.txt", result.returncode, result.stderr_tail, result.stopped_by
    )
    return fail(contract.output_dir, message, result.returncode)


def program_name(contract: Contract) -> str:
    return f"training program {contract.program}" if contract.program else "built-in trainer"


def run_command(contract: Contract, plan: launch.LaunchPlan, env: dict, finish=None) -> int:
    result = relay.run_relaying_signals(
        plan.command, env, working_dir(contract), contract.settings.stop_grace_s
    )
    if result.returncode == 0 and result.stopped_by is None:
        # Done: a SIGTERM from here on (SageMaker local mode's compose stops the other hosts
        # as soon as one exits) must not turn a finished host into exit 143.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        outcome.write_success(contract.output_dir)
        log.info("training finished")
        if finish is not None:
            finish.cross()
        return 0
    if result.returncode == 0:
        log.info("training stopped by %s and exited cleanly", result.stopped_by)
        return 0
    message = outcome.failure_message(
        program_name(contract), result.returncode, result.stderr_tail, result.stopped_by
    )
    return fail(contract.output_dir, message, result.returncode)


def open_finish_line(contract: Contract, plan: launch.LaunchPlan):
    """The hosts of a multi-host job end together (train.finish_line says why);
    None for one host, and for MPI, whose worker hosts wait for the leader already."""
    if len(contract.hosts) < 2 or plan.launcher in ("mpi", "mpi-worker"):
        return None
    settings = contract.settings
    if contract.current_host == contract.leader_host:
        return finish_line.FinishLine(settings.sync_port, len(contract.hosts) - 1, settings.mpi_wait_s)
    return finish_line.FinishLineWorker(contract.leader_host, settings.sync_port, settings.mpi_wait_s)


def run_mpi_leader(contract: Contract, plan: launch.LaunchPlan, env: dict) -> int:
    if shutil.which("mpirun", path=env.get("PATH")) is None:
        return fail(contract.output_dir, "MPI was asked for (sagemaker_mpi_enabled) but mpirun is not installed")
    workers = len(contract.hosts) - 1
    if workers == 0:
        return run_command(contract, plan, env)
    settings = contract.settings
    log.info("MPI leader: waiting for %d worker host(s) on port %d", workers, settings.sync_port)
    try:
        public_key = rendezvous.make_job_ssh_key(Path.home() / ".ssh" / "id_ed25519")
        ready = rendezvous.wait_for_mpi_workers(settings.sync_port, workers, settings.mpi_wait_s, public_key)
    except (TimeoutError, OSError, subprocess.CalledProcessError) as error:
        return fail(contract.output_dir, f"MPI start failed: {error}")
    try:
        return run_command(contract, plan, env)
    finally:
        ready.release()  # tells the worker hosts the job is over


def run_mpi_worker(contract: Contract, plan: launch.LaunchPlan) -> int:
    if not Path(plan.command[0]).exists():
        return fail(contract.output_dir, f"MPI worker hosts need sshd at {plan.command[0]}; it is not installed")
    settings = contract.settings
    try:
        return rendezvous.serve_as_mpi_worker(
            contract.leader_host, settings.sync_port, settings.mpi_wait_s, plan.command,
            authorized_keys=Path.home() / ".ssh" / "authorized_keys",
        )
    except (TimeoutError, OSError, subprocess.CalledProcessError) as error:
        return fail(contract.output_dir, f"MPI worker {contract.current_host} failed: {error}")


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    environ = dict(os.environ)
    output_dir = ml_root(environ) / "output"
    if not args.print_plan:
        outcome.clear_outcome(output_dir)
    try:
        contract = netif.with_usable_interface(load_contract(environ))
        if not args.print_plan:
            prepare_code(contract)
        sm_env = contract.environment()
        plan = launch.plan_launch(contract, sm_env)
        env = child_environment(environ, contract, sm_env, plan.env)
    except ContractError as error:
        return fail(output_dir, str(error))
    for notice in plan.notices:
        log.warning("%s", notice)
    log.info(
        "host %s of %s, %d GPU(s), launcher %s", contract.current_host, contract.hosts, contract.num_gpus, plan.launcher
    )
    if args.print_plan:
        print(f"launcher: {plan.launcher}\ncommand: {shlex.join(plan.command)}")
        return 0

    make_output_dirs(contract)
    try:
        finish = open_finish_line(contract, plan)
    except OSError as error:
        return fail(contract.output_dir, f"cannot listen on port {contract.settings.sync_port} "
                    f"(BYOC_SYNC_PORT) for the other hosts: {error}")
    code = install_requirements(contract, env)
    if code != 0:
        return code
    if plan.launcher == "mpi-worker":
        return run_mpi_worker(contract, plan)
    if plan.launcher == "mpi":
        return run_mpi_leader(contract, plan, env)
    return run_command(contract, plan, env, finish)


if __name__ == "__main__":
    sys.exit(main())
