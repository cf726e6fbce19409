"""`python -m train` end to end against a temporary /opt/ml tree, and the failure message."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from train import outcome

REPO = Path(__file__).resolve().parents[3]

ECHO_SCRIPT = """
import json, os, sys
names = ["SM_HP_BATCH_SIZE", "SM_HP_LR", "SM_CHANNEL_TRAIN", "SM_MODEL_DIR", "SM_HOSTS",
         "SM_CURRENT_HOST", "SM_NUM_GPUS", "SM_USER_ARGS", "SM_CHECKPOINT_DIR"]
seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), **{n: os.environ.get(n) for n in names}}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
    json.dump(seen, f)
"""


def make_job(root, script, name="train.py", hyperparameters=None, requirements=None, channels=("train",)):
    """A job tree: code in <root>/src, every hyperparameter JSON-encoded as SageMaker's SDK does."""
    code = root / "src"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(textwrap.dedent(script))
    if requirements is not None:
        (code / "requirements.txt").write_text(requirements)
    hps = {"sagemaker_program": name, "sagemaker_submit_directory": str(code), **(hyperparameters or {})}
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hps.items()}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in channels}))
    for channel in channels:
        (root / "input" / "data" / channel).mkdir(parents=True, exist_ok=True)
        (root / "input" / "data" / channel / "data.csv").write_text("1,2\n")
    return root


def train_env(root, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update(BYOC_ML_ROOT=str(root), PYTHONPATH=str(REPO), BYOC_STOP_GRACE_S="5")
    env.update(extra)
    return env


def run_train(root, *args, **extra):
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        env=train_env(root, **extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def failure(root):
    return (root / "output" / "failure").read_text()


# -- end to end ---------------------------------------------------------------------------


def test_help_describes_inputs_and_launchers():
    result = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for words in ("hyperparameters.json", "SAGEMAKER_PROGRAM", "torchrun", "mpirun", "train.classify", "BYOC_ML_ROOT"):
        assert words in result.stdout


def test_script_gets_args_and_sm_variables(tmp_path):
    make_job(tmp_path, ECHO_SCRIPT, hyperparameters={"batch-size": 32, "lr": 0.01})
    result = run_train(tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--batch-size", "32", "--lr", "0.01"]
    assert seen["SM_HP_BATCH_SIZE"] == "32" and seen["SM_HP_LR"] == "0.01"
    assert seen["SM_CHANNEL_TRAIN"] == f"{tmp_path}/input/data/train"
    assert seen["SM_MODEL_DIR"] == f"{tmp_path}/model"
    assert seen["SM_HOSTS"] == '["algo-1"]' and seen["SM_CURRENT_HOST"] == "algo-1"
    assert seen["SM_NUM_GPUS"] == "0"
    assert json.loads(seen["SM_USER_ARGS"]) == ["--batch-size", "32", "--lr", "0.01"]
    assert seen["SM_CHECKPOINT_DIR"] == f"{tmp_path}/checkpoints"
    assert seen["cwd"] == f"{tmp_path}/src"
    assert (tmp_path / "output" / "success").exists()
    assert not (tmp_path / "output" / "failure").exists()


# init_process_group with the default env:// and nothing else, as AWS's mnist.py does
INIT_PROCESS_GROUP = """
import json, os, torch, torch.distributed as dist
hosts = json.loads(os.environ["SM_HOSTS"])
rank = hosts.index(os.environ["SM_CURRENT_HOST"])
dist.init_process_group("gloo", rank=rank, world_size=len(hosts))
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
seen = {n: os.environ.get(n) for n in ("MASTER_ADDR", "MASTER_PORT")}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "group.json"), "w") as f:
    json.dump({"world": dist.get_world_size(), "rank": dist.get_rank(), "sum": total.item(), **seen}, f)
dist.destroy_process_group()
"""


def hosts_config(root, hosts, current):
    (root / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": current, "hosts": hosts, "network_interface_name": "lo"}))


def test_init_process_group_with_env_defaults_on_one_host(tmp_path):
    """A plain run (no resourceconfig: one host, 'algo-1', whose name does not resolve here):
    the script's group forms on 127.0.0.1 and the default port 7777."""
    make_job(tmp_path, INIT_PROCESS_GROUP)
    result = run_train(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    group = json.loads((tmp_path / "model" / "group.json").read_text())
    assert group["world"] == 1 and group["sum"] == 1.0
    assert group["MASTER_PORT"] == "7777"


def test_two_hosts_with_no_distribution_form_one_group(tmp_path, free_port):
    """AWS's test_mnist_cpu[gloo] in small: 2 hosts, no distribution setting, each host's
    script calls init_process_group(backend, rank=, world_size=) itself. Two `train`s on this
    machine stand for the hosts (named localhost and 127.0.0.1); the port is a user's setting."""
    hosts = ["localhost", "127.0.0.1"]
    port, sync = str(free_port()), str(free_port())
    roots = [make_job(tmp_path / f"host{i}", INIT_PROCESS_GROUP) for i in range(2)]
    procs = []
    for root, host in zip(roots, hosts):
        hosts_config(root, hosts, host)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "train"], cwd=REPO, text=True,
            env=train_env(root, MASTER_PORT=port, BYOC_SYNC_PORT=sync, BYOC_MPI_WAIT_S="30"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    logs = [proc.communicate(timeout=90) for proc in procs]
    for proc, (_, err) in zip(procs, logs):
        assert proc.returncode == 0, err[-3000:]
    for rank, root in enumerate(roots):
        group = json.loads((root / "model" / "group.json").read_text())
        # one group of two (1 + 2 all-reduced), through the first host's name and the user's port
        assert group == {"world": 2, "rank": rank, "sum": 3.0, "MASTER_ADDR": "localhost", "MASTER_PORT": port}


def test_master_addr_and_port_the_user_sets_win(tmp_path):
    # e.g. the estimator's environment={"MASTER_PORT": ...}: the container's environment
    make_job(tmp_path, """
import json, os
with open(os.path.join(os.environ["SM_MODEL_DIR"], "master.json"), "w") as f:
    json.dump([os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")], f)
""")
    result = run_train(tmp_path, MASTER_ADDR="10.1.2.3", MASTER_PORT="23456")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "model" / "master.json").read_text()) == ["10.1.2.3", "23456"]


def test_code_from_a_tarball(tmp_path):
    make_job(tmp_path, ECHO_SCRIPT)
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "train.py", arcname="train.py")
    # the hyperparameter would win over the variable: drop it to use the archive
    hps = json.loads((tmp_path / "input/config/hyperparameters.json").read_text())
    del hps["sagemaker_submit_directory"]
    (tmp_path / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    result = run_train(tmp_path, SAGEMAKER_SUBMIT_DIRECTORY=str(archive))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "code" / "train.py").exists()
    assert json.loads((tmp_path / "model" / "seen.json").read_text())["cwd"] == f"{tmp_path}/code"


def evil_archive(path):
    """A source archive with one member that escapes the code folder."""
    import io
    with tarfile.open(path, "w:gz") as tar:
        body = b"print('pwned')"
        info = tarfile.TarInfo("../evil.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


def test_an_archive_escaping_the_code_folder_is_refused(tmp_path):
    make_job(tmp_path, ECHO_SCRIPT)
    archive = evil_archive(tmp_path / "sourcedir.tar.gz")
    hps = json.loads((tmp_path / "input/config/hyperparameters.json").read_text())
    del hps["sagemaker_submit_directory"]
    (tmp_path / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    result = run_train(tmp_path, SAGEMAKER_SUBMIT_DIRECTORY=str(archive))
    assert result.returncode != 0
    assert (tmp_path / "output" / "failure").read_text().startswith("cannot unpack source archive")
    assert not (tmp_path / "evil.py").exists()


def test_member_checks_for_pythons_without_the_data_filter(tmp_path):
    # the CPU image's Python (Debian 12: 3.11.2) has no tarfile data filter
    from train.__main__ import checked_members
    dest = tmp_path / "code"
    dest.mkdir()
    with tarfile.open(evil_archive(tmp_path / "evil.tar.gz")) as tar:
        with pytest.raises(ValueError, match="outside"):
            checked_members(tar, dest)
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        (tmp_path / "a.py").write_text("x = 1\n")
        tar.add(tmp_path / "a.py", arcname="pkg/a.py")
    with tarfile.open(good) as tar:
        assert [m.name for m in checked_members(tar, dest)] == ["pkg/a.py"]


def test_failing_script_writes_reason_first(tmp_path):
    script = """
    import sys
    print("some progress", file=sys.stderr)
    raise ValueError("learning rate must be positive, got -1")
    """
    make_job(tmp_path, script)
    result = run_train(tmp_path)
    assert result.returncode == 1
    text = failure(tmp_path)
    first_line = text.splitlines()[0]
    assert first_line == (
        "training program train.py exited with code 1: ValueError: learning rate must be positive, got -1"
    )
    assert "Traceback (most recent call last)" in text  # the end of stderr follows
    assert "learning rate must be positive" in result.stderr  # and it streamed to our stderr
    assert not (tmp_path / "output" / "success").exists()


def test_malformed_hyperparameters_fail_before_any_work(tmp_path):
    make_job(tmp_path, "open('ran', 'w')")
    (tmp_path / "input/config/hyperparameters.json").write_text('{"epochs": "3",, }')
    result = run_train(tmp_path)
    assert result.returncode == 1
    text = failure(tmp_path)
    assert text.startswith("hyperparameters.json is not valid JSON: Expecting property name")
    assert len(text) < 200 and "Traceback" not in text + result.stderr
    assert not (tmp_path / "src" / "ran").exists()


def test_empty_channel_fails_with_its_name(tmp_path):
    make_job(tmp_path, "pass", channels=("train", "val"))
    (tmp_path / "input/data/val/data.csv").unlink()
    result = run_train(tmp_path)
    assert result.returncode == 1
    assert failure(tmp_path).startswith("channel 'val' is declared but")


def test_missing_program_fails_with_reason(tmp_path):
    make_job(tmp_path, "pass", hyperparameters={"sagemaker_program": "nope.py"})
    assert run_train(tmp_path).returncode == 1
    assert failure(tmp_path).startswith("training program 'nope.py' not found")


def test_bad_requirements_fail_with_pip_reason(tmp_path):
    make_job(tmp_path, "pass", requirements="this is not a requirement line ===\n")
    result = run_train(tmp_path, PIP_NO_INDEX="1")
    assert result.returncode != 0
    assert failure(tmp_path).startswith("pip install -r requirements.txt exited with code")


def test_print_plan_shows_the_command_without_running(tmp_path):
    make_job(tmp_path, "open('ran', 'w')", hyperparameters={"sagemaker_torch_distributed_enabled": True})
    result = run_train(tmp_path, "--print-plan")
    assert result.returncode == 0, result.stderr
    assert "launcher: torchrun" in result.stdout and "torch.distributed.run" in result.stdout
    assert not (tmp_path / "src" / "ran").exists()


def start_train(tmp_path, script, grace_s="5"):
    make_job(tmp_path, script)
    process = subprocess.Popen(
        [sys.executable, "-m", "train"],
        env=train_env(tmp_path, BYOC_STOP_GRACE_S=grace_s),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "READY"  # the handler is installed
    return process


def test_sigterm_reaches_the_script_and_train_exits_promptly(tmp_path):
    script = """
    import signal, sys, time
    def on_term(signum, frame):
        open("/MARKER", "w").write("checkpointed")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("READY", flush=True)
    time.sleep(60)
    """.replace("/MARKER", str(tmp_path / "marker"))
    process = start_train(tmp_path, script)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.monotonic() - started < 5
    assert (tmp_path / "marker").read_text() == "checkpointed"
    assert process.returncode == 0


def test_script_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    script = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("READY", flush=True)
    time.sleep(60)
    """
    process = start_train(tmp_path, script, grace_s="2")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    assert 1.5 < time.monotonic() - started < 10
    assert process.returncode == 137
    assert failure(tmp_path).startswith("job stopped by SIGTERM: training program train.py exited with code 137")


# -- the failure message ------------------------------------------------------------------------


def test_failure_message_reason_first_and_bounded():
    stderr = "noise\n" * 500 + "Traceback (most recent call last):\n  File x\nKeyError: 'label'\n"
    message = outcome.failure_message("training program t.py", 1, stderr)
    assert message.startswith("training program t.py exited with code 1: KeyError: 'label'\n")
    assert len(message) < 1200
    assert message.rstrip().endswith("KeyError: 'label'")


def test_failure_message_names_the_mpi_rank():
    stderr = "[1,0]<stdout>:epoch 1\n[1,3]<stderr>:RuntimeError: CUDA out of memory\n"
    rank, cause = outcome.find_cause(stderr)
    assert (rank, cause) == (3, "RuntimeError: CUDA out of memory")


def test_failure_message_names_the_torchrun_root_cause_rank():
    stderr = textwrap.dedent(
        """\
        [rank1]: Traceback (most recent call last):
        [rank1]: ZeroDivisionError: division by zero
        [rank0]: RuntimeError: Connection closed by peer
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
        Failures:
        [1]:
          rank      : 0 (local_rank: 0)
          exitcode  : 1 (pid: 41)
        Root Cause (first observed failure):
        [0]:
          rank      : 1 (local_rank: 1)
          exitcode  : 1 (pid: 42)
        """
    )
    message = outcome.failure_message("training program t.py", 1, stderr)
    assert message.startswith("training program t.py exited with code 1 (rank 1): ZeroDivisionError: division by zero")


def test_failure_message_without_stderr():
    assert outcome.failure_message("built-in trainer", 139, "") == "built-in trainer exited with code 139 (SIGSEGV)\n"


def test_failure_file_written_by_the_program_is_kept(tmp_path):
    (tmp_path / "failure").write_text("mine")
    assert outcome.write_failure(tmp_path, "ours") is False
    assert (tmp_path / "failure").read_text() == "mine"
    outcome.clear_outcome(tmp_path)
    assert outcome.write_failure(tmp_path, "ours") is True


def test_source_archive_on_s3_is_downloaded_and_run(tmp_path, moto_server):
    # what a remote SageMaker job gets: source_dir uploaded as s3://.../sourcedir.tar.gz
    import boto3

    root = make_job(tmp_path / "ml", ECHO_SCRIPT, hyperparameters={"batch-size": 8})
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "src" / "train.py", arcname="train.py")
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="jobs")
    s3.upload_file(str(archive), "jobs", "job-1/source/sourcedir.tar.gz")
    hps = json.loads((root / "input/config/hyperparameters.json").read_text())
    hps["sagemaker_submit_directory"] = json.dumps("s3://jobs/job-1/source/sourcedir.tar.gz")
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    aws = dict(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")

    result = run_train(root, **aws)
    assert result.returncode == 0, result.stderr
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--batch-size", "8"]
    assert seen["cwd"] == str(root / "code")

    # a missing object fails before any work, with the reason first
    hps["sagemaker_submit_directory"] = json.dumps("s3://jobs/nope/sourcedir.tar.gz")
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    shutil.rmtree(root / "code")
    result = run_train(root, **aws)
    assert result.returncode != 0
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("cannot download source archive s3://jobs/nope/sourcedir.tar.gz")
