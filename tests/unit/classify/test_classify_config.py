import subprocess
import sys

import pytest

from train.classify.config import Paths, parse_args


def test_defaults_and_both_spellings():
    a = parse_args([])
    assert (a.arch, a.epochs, a.batch_size, a.lr, a.amp, a.resume) == ("resnet18", 10, 64, None, "auto", True)
    b = parse_args(["--batch_size", "32", "--batch-size", "16", "--hflip", "False", "--mean", "[0.5,0.5,0.5]",
                    "--std", "0.5,0.5,0.5", "--lr", "auto", "--channels_last", "true"])
    assert (b.batch_size, b.hflip, b.mean, b.std, b.lr, b.channels_last) == (16, False, (0.5,) * 3, (0.5,) * 3,
                                                                            None, True)


@pytest.mark.parametrize("argv, reason", [
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--val-fraction", "1.5"], "must be in [0, 1)"),
    (["--optimizer", "lamb"], "invalid choice"),
    (["--mean", "1,2"], "expected three numbers"),
    (["--deterministic", "perhaps"], "expected true or false"),
])
def test_bad_values_exit_2_with_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert reason in capsys.readouterr().err


def test_help_runs_without_heavy_imports():
    out = subprocess.run([sys.executable, "-c", "import sys, train.classify.__main__ as m\n"
                          "try: m.main(['--help'])\nexcept SystemExit: pass\n"
                          "print('torchvision' in sys.modules)"], capture_output=True, text=True, check=True)
    assert "--checkpoint-every-seconds" in out.stdout and out.stdout.strip().endswith("False")


def test_paths_follow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BYOC_ML_ROOT", str(tmp_path))
    for var in ("SM_CHECKPOINT_DIR", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    p = Paths.from_env()
    assert p.channel("train") == tmp_path / "input/data/train"
    assert (p.model, p.output, p.checkpoints) == (tmp_path / "model", tmp_path / "output", tmp_path / "checkpoints")
    monkeypatch.setenv("SM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    assert p.checkpoints == tmp_path / "ck"
