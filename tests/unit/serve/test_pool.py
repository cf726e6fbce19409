"""The python engine's sizing from the container's memory (serve/pool.py): how many workers a
real-time model gets, and the 507 a multi-model load gets when it would not fit. The memory in
use is faked; the rest (processes, batching, failures) runs for real in test_serve_local.py."""
import asyncio

import pytest

from serve import pool
from serve.config import ServeConfig
from serve.errors import InsufficientMemory

MIB = 1 << 20


def engine_for(tmp_path, memory_mib, weights_mib, **env):
    cfg = ServeConfig.from_env({k: str(v) for k, v in env.items()}, gpus=0, cpus=2, memory_bytes=memory_mib * MIB)
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.pt").write_bytes(b"\0" * (weights_mib * MIB))
    engine = pool.PythonEngine(cfg, str(tmp_path / "work"), required_model="model")
    return engine, pool.ServedModel("model", str(model_dir), str(model_dir))


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("memory_mib,weights_mib,want", [(16384, 45, 2), (2048, 45, 2), (1500, 45, 1), (1024, 200, 1)])
def test_the_real_time_model_gets_the_workers_the_memory_holds(tmp_path, monkeypatch, memory_mib, weights_mib, want):
    monkeypatch.setattr(pool, "memory_in_use", lambda: 300 * MIB)

    async def check():
        engine, model = engine_for(tmp_path, memory_mib, weights_mib)
        return engine._fit_workers(model)
    assert run(check()) == want


def test_a_workers_setting_is_kept_whatever_the_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "memory_in_use", lambda: 300 * MIB)

    async def check():
        engine, model = engine_for(tmp_path, 1024, 200, SAGEMAKER_MODEL_SERVER_WORKERS=3)
        return engine._fit_workers(model)
    assert run(check()) == 3


def test_a_load_that_would_not_fit_is_507_with_the_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "memory_in_use", lambda: 600 * MIB)

    async def check():
        engine, model = engine_for(tmp_path, 1200, 300)
        with pytest.raises(InsufficientMemory) as refused:
            engine._check_memory(model)
        (tmp_path / "b").mkdir()
        engine_ok, small = engine_for(tmp_path / "b", 8192, 10)
        engine_ok._check_memory(small)   # fits: no error
        return refused.value
    refused = run(check())
    assert refused.status == 507 and "300 MiB of weights" in refused.message and "MiB are free" in refused.message


def test_ping_is_healthy_while_a_multi_model_load_runs_but_not_a_real_time_one(tmp_path):
    async def check():
        cfg = ServeConfig.from_env({}, gpus=0, cpus=2, memory_bytes=None)
        answers = []
        for required in (None, "model"):
            engine = pool.PythonEngine(cfg, str(tmp_path / "work"), required_model=required)
            engine.served["model"] = pool.ServedModel("model", str(tmp_path), str(tmp_path))   # loading
            answers.append(engine.health())
        return answers
    multi, real_time = run(check())
    assert multi == (True, "") and real_time == (False, "loading model")


def test_an_unloaded_model_takes_its_requirements_with_it(tmp_path):
    # pip --target keeps what is there: a name loaded again would run the old packages
    async def check():
        cfg = ServeConfig.from_env({"SAGEMAKER_MULTI_MODEL": "true"}, gpus=0, cpus=2, memory_bytes=None)
        engine = pool.PythonEngine(cfg, str(tmp_path / "work"), required_model=None)
        site = tmp_path / "work" / "site-packages" / "m"
        (site / "old_pkg").mkdir(parents=True)
        engine.served["m"] = pool.ServedModel("m", str(tmp_path), str(tmp_path))
        await engine.unload("m")
        return site.exists(), (tmp_path / "work" / "site-packages").exists()
    assert run(check()) == (False, True)
