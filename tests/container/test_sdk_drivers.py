"""What SageMaker SDK v3's own drivers (`SourceCode` jobs: sm_train.sh and its Python drivers)
need from the training image: bash, python3, pip and torchrun on PATH; for the MPI driver
mpirun, sshd, paramiko and mpi4py (it runs `mpirun ... python -m mpi4py <script>`)."""
from support.containers import run_in

MPI_SCRIPT = """\
cat >/tmp/mpi.py <<'PY'
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(f"mpi rank {comm.Get_rank()} of {comm.Get_size()} sum {comm.allreduce(comm.Get_rank() + 1)}", flush=True)
PY
mpirun -np 2 --oversubscribe python3 -m mpi4py /tmp/mpi.py
"""


def test_the_drivers_find_their_tools(docker, train_image):
    check = ("for c in bash python3 pip pip3 torchrun mpirun; do command -v $c >/dev/null || "
             "{ echo missing $c; exit 1; }; done; test -x /usr/sbin/sshd || { echo missing sshd; exit 1; }; "
             "python3 -c 'import mpi4py, paramiko'")
    result = run_in(docker, train_image, "-c", check, entrypoint="/bin/bash")
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_m_mpi4py_under_mpirun(docker, train_image):
    result = run_in(docker, train_image, "-c", MPI_SCRIPT, entrypoint="/bin/bash", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mpi rank 0 of 2 sum 3" in result.stdout and "mpi rank 1 of 2 sum 3" in result.stdout, result.stdout
