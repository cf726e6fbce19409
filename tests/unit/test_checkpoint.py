"""byoc.checkpoint: atomic save, fallback past a broken file, keep-last-K, state/RNG round trip, SIGTERM."""

import os
import random
import signal
import time

import numpy as np
import pytest
import torch

from byoc.checkpoint import (Checkpointer, TerminationFlag, atomic_save, capture_rng_state, capture_state,
                             default_checkpoint_dir, restore_rng_state, restore_state)


def small_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    return model, opt, sched


def train_steps(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(16, 4)
        loss = model(x).logsumexp(1).mean() + torch.nn.functional.dropout(x, 0.5).sum() * 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_atomic_save_leaves_no_temp_and_loads_weights_only(tmp_path):
    path = atomic_save({"w": torch.arange(3)}, tmp_path / "sub" / "x.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.pt"]


def test_failed_write_keeps_previous_file(tmp_path):
    path = atomic_save({"v": 1}, tmp_path / "x.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"v": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_truncated_latest_falls_back_to_previous(tmp_path, caplog):
    ck = Checkpointer(tmp_path, keep_last=3)
    ck.save({"step": 10}, 10)
    newest = ck.save({"step": 20, "pad": torch.zeros(1000)}, 20)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn file
    state = ck.load_latest()
    assert state["step"] == 10
    assert "unreadable" in caplog.text


def test_garbage_and_foreign_files_are_ignored(tmp_path):
    ck = Checkpointer(tmp_path)
    assert ck.load_latest() is None
    (tmp_path / "checkpoint-0000000005.pt").write_bytes(b"not a zip")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".checkpoint-0000000009.pt.abc.tmp").write_bytes(b"half")  # a write killed by -9
    assert ck.load_latest() is None
    ck.save({"ok": True}, 7)
    assert ck.load_latest()["ok"] is True


def test_keep_last_k_orders_by_step_not_name_length(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in (5, 50, 500, 5000):
        ck.save({"step": step}, step)
    assert [p.name for p in ck.checkpoints()] == ["checkpoint-0000000500.pt", "checkpoint-0000005000.pt"]
    assert ck.load_latest()["step"] == 5000


def test_disabled_checkpointer_writes_nothing(tmp_path):
    ck = Checkpointer(tmp_path / "ck", enabled=False)
    assert ck.save({"x": 1}, 1) is None
    assert not (tmp_path / "ck").exists()


def test_due_by_steps_and_seconds(tmp_path):
    ck = Checkpointer(tmp_path, every_steps=10)
    assert not ck.due(9) and ck.due(10)
    ck.mark_saved(10)
    assert not ck.due(19) and ck.due(20)
    timed = Checkpointer(tmp_path, every_seconds=0.05)
    assert not timed.due(1)
    time.sleep(0.06)
    assert timed.due(1)
    assert not Checkpointer(tmp_path).due(10**9)  # both off


def test_rng_round_trip_all_generators():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1), np.random.normal()  # leave a cached gaussian in both
    saved = capture_rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(saved)
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.normal(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_state_round_trip_continues_bitwise(tmp_path):
    """Save at step 7, keep training to 14; restore into fresh objects and redo 7 -> 14: equal."""
    model, opt, sched = small_run()
    train_steps(model, opt, sched, 7)
    ck = Checkpointer(tmp_path)
    ck.save(capture_state(model, opt, sched, epoch=1, step=3, global_step=7, history=[{"a": 1.0}]), 7)
    train_steps(model, opt, sched, 7)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = small_run()
    pos = restore_state(ck.load_latest(), model2, opt2, sched2)
    assert (pos["epoch"], pos["step"], pos["global_step"]) == (1, 3, 7)
    assert pos["extra"]["history"] == [{"a": 1.0}]
    train_steps(model2, opt2, sched2, 7)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_default_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SM_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("BYOC_ML_ROOT", raising=False)
    assert str(default_checkpoint_dir()) == "/opt/ml/checkpoints"
    monkeypatch.setenv("BYOC_ML_ROOT", str(tmp_path))
    assert default_checkpoint_dir() == tmp_path / "checkpoints"
    monkeypatch.setenv("SM_CHECKPOINT_DIR", str(tmp_path / "x"))
    assert default_checkpoint_dir() == tmp_path / "x"


def test_sigterm_only_sets_flag_and_uninstall_restores():
    before = signal.getsignal(signal.SIGTERM)
    with TerminationFlag() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between bytecodes of the main thread
            if stop.requested:
                break
            time.sleep(0.01)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_atomic_save_gives_the_file_the_usual_permissions(tmp_path):
    # a model file written by the (root) trainer must be readable by the
    # serving image's non-root user: not mkstemp's 0600
    import os
    from byoc.checkpoint import atomic_save
    old = os.umask(0o022)
    try:
        path = atomic_save({"w": 1}, tmp_path / "model.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
