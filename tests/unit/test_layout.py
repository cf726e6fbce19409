"""byoc.layout: one rule for the /opt/ml root, used by train's contract, the built-in
trainer's paths and the checkpoint helpers alike."""

from pathlib import Path

from byoc import layout
from byoc.checkpoint import default_checkpoint_dir
from train.classify.config import Paths


def test_root_rule(tmp_path):
    assert layout.ml_root({}) == Path("/opt/ml")
    assert layout.ml_root({"BYOC_ML_ROOT": ""}) == Path("/opt/ml")  # empty counts as unset
    assert layout.ml_root({"BYOC_ML_ROOT": str(tmp_path)}) == tmp_path


def test_checkpoint_rule(tmp_path):
    assert layout.checkpoint_dir({}) == Path("/opt/ml/checkpoints")
    assert layout.checkpoint_dir({"BYOC_ML_ROOT": str(tmp_path)}) == tmp_path / "checkpoints"
    assert layout.checkpoint_dir({"BYOC_ML_ROOT": str(tmp_path), "SM_CHECKPOINT_DIR": ""}) == tmp_path / "checkpoints"
    assert layout.checkpoint_dir({"SM_CHECKPOINT_DIR": str(tmp_path / "x")}) == tmp_path / "x"


def test_empty_root_means_opt_ml_everywhere(monkeypatch):
    """An empty BYOC_ML_ROOT used to give a relative 'checkpoints' folder in byoc.checkpoint."""
    monkeypatch.setenv("BYOC_ML_ROOT", "")
    monkeypatch.delenv("SM_CHECKPOINT_DIR", raising=False)
    assert default_checkpoint_dir() == Path("/opt/ml/checkpoints")
    assert Paths.from_env().checkpoints == Path("/opt/ml/checkpoints")


def test_paths_read_the_environ_they_are_given(monkeypatch, tmp_path):
    monkeypatch.setenv("BYOC_ML_ROOT", "/elsewhere")
    monkeypatch.setenv("SM_MODEL_DIR", "/elsewhere/model")
    monkeypatch.setenv("SM_CHECKPOINT_DIR", "/elsewhere/ck")
    paths = Paths.from_env({"BYOC_ML_ROOT": str(tmp_path), "SM_OUTPUT_DATA_DIR": str(tmp_path / "od")})
    assert paths.root == tmp_path
    assert (paths.model, paths.checkpoints, paths.output_data) == \
        (tmp_path / "model", tmp_path / "checkpoints", tmp_path / "od")

