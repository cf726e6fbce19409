"""The job's outcome files: /opt/ml/output/success and /opt/ml/output/failure.

SageMaker shows only the first 1024 characters of the failure file as the
job's FailureReason, so the reason comes first (exit code, failing rank, the
exception line) and the end of the program's stderr follows it.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

STDERR_CHARS = 1000

# Prefixes that launchers put before a rank's lines: mpirun --tag-output, torch's [rankN]:
MPI_TAG = re.compile(r"^\[\d+,(\d+)\]<std(?:err|out)>:\s?")
TORCH_RANK_TAG = re.compile(r"^\[(?:default)?rank(\d+)\]:\s?")
TORCHRUN_ROOT_CAUSE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")
UNINFORMATIVE = ("ChildFailedError",)  # torchrun's summary, not the cause


def untag(line: str) -> tuple:
    """(rank or None, the line without a launcher's rank prefix)."""
    for tag in (MPI_TAG, TORCH_RANK_TAG):
        match = tag.match(line)
        if match:
            return int(match.group(1)), line[match.end() :]
    return None, line


def find_cause(stderr: str) -> tuple:
    """(failing rank or None, the most telling line) from the end of a program's stderr.

    The failing rank is torchrun's "Root Cause" rank, else the rank whose tagged
    line held the last exception; the line is that rank's last exception line,
    else the last exception line, else the last line.
    """
    last_line = None
    last_exception = None  # (rank, line)
    exception_by_rank = {}
    root_cause_rank = None
    in_root_cause = False
    for raw in stderr.splitlines():
        rank, line = untag(raw.rstrip())
        if not line.strip():
            continue
        last_line = line.strip()
        if line.startswith("Root Cause"):
            in_root_cause = True
        match = TORCHRUN_ROOT_CAUSE_RANK.match(line)
        if match and in_root_cause and root_cause_rank is None:
            root_cause_rank = int(match.group(1))
        if EXCEPTION_LINE.match(line) and not line.split(":")[0].endswith(UNINFORMATIVE):
            last_exception = (rank, line.strip())
            if rank is not None:
                exception_by_rank[rank] = line.strip()
    if root_cause_rank is not None:
        fallback = last_exception[1] if last_exception else last_line
        return root_cause_rank, exception_by_rank.get(root_cause_rank, fallback)
    if last_exception:
        return last_exception
    return None, last_line


def describe_exit(returncode: int) -> str:
    if returncode > 128 and returncode - 128 in signal.Signals._value2member_map_:
        return f"code {returncode} ({signal.Signals(returncode - 128).name})"
    return f"code {returncode}"


def failure_message(what: str, returncode: int, stderr: str, stopped_by: int | None = None) -> str:
    """Reason first, then the end of stderr. `what` names the failed step, e.g. 'training program'."""
    rank, cause = find_cause(stderr)
    head = f"{what} exited with {describe_exit(returncode)}"
    if stopped_by is not None:
        head = f"job stopped by {signal.Signals(stopped_by).name}: {head}"
    if rank is not None:
        head += f" (rank {rank})"
    if cause:
        head += f": {cause[:400]}"
    tail = stderr.strip()[-STDERR_CHARS:]
    if not tail:
        return head + "\n"
    return f"{head}\n\n--- end of stderr ---\n{tail}\n"


def clear_outcome(output_dir: Path) -> None:
    """Remove success/failure left by an earlier run in the same (mounted) folder."""
    for name in ("success", "failure"):
        (output_dir / name).unlink(missing_ok=True)


def write_failure(output_dir: Path, message: str) -> bool:
    """Write the failure file unless the program wrote its own (as sagemaker-training does)."""
    path = output_dir / "failure"
    if path.exists():
        return False
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(message, encoding="utf-8")
    return True


def write_success(output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "success").write_text("", encoding="utf-8")
