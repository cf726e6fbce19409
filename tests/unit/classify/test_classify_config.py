import subprocess
import sys

import pytest

from train.classify.config import Paths, parse_args, resolve_lr, resolve_weight_decay


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
    (["--optimizer", "adagrad"], "invalid choice"),
    (["--label-columns", "a,,b"], "expected comma-separated names"),
    (["--label-columns", "a,a"], "is repeated"),
    (["--head-weights", "2,0"], "weights must be > 0"),
    (["--label-columns", "a,b,c", "--head-weights", "2,1"], "--head-weights has 2 values for 3 label column(s)"),
    (["--pixel-shape", "137"], "expected HEIGHT,WIDTH"),
    (["--pixel-shape", "0,5"], "expected positive HEIGHT,WIDTH"),
    (["--cutmix-alpha", "-1"], "must be >= 0"),
    (["--label-columns", "image_id,b"], "is also a label column"),
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


def test_parquet_and_head_options():
    a = parse_args([])
    assert (a.label_columns, a.head_weights, a.image_column, a.pixel_shape, a.labels_csv) == \
        (("label",), (1.0,), None, None, None)
    bengali = parse_args(["--label_columns", "grapheme_root,vowel_diacritic,consonant_diacritic",
                          "--pixel-shape", "137x236", "--image-column", "auto"])
    assert bengali.head_weights == (2.0, 1.0, 1.0)  # the competition's weighting by default
    assert bengali.pixel_shape == (137, 236)
    two = parse_args(["--label-columns", "digit,high", "--head-weights", "[3, 1]", "--pixel-shape", "32,48"])
    assert (two.head_weights, two.pixel_shape) == ((3.0, 1.0), (32, 48))


def test_help_documents_every_new_hyperparameter():
    from train.classify.config import build_parser

    text = build_parser().format_help()
    for name in ("--label-columns", "--head-weights", "--image-column", "--pixel-shape", "--id-column",
                 "--labels-csv", "--cutmix-alpha", "--mixup-alpha", "--label-smoothing", "--sync-bn",
                 "{sgd,adamw,lamb}", "{cosine,onecycle,constant}"):
        assert name in text, name


def test_docs_table_is_the_help_text():
    from pathlib import Path

    from train.classify.config import help_markdown

    docs = (Path(__file__).resolve().parents[3] / "docs/hyperparameters.md").read_text()
    assert help_markdown() in docs, "regenerate docs/hyperparameters.md from help_markdown()"


def test_auto_lr_and_weight_decay_as_help_says():
    sgd = parse_args(["--batch-size", "64"])
    assert (resolve_lr(sgd, world_size=8), resolve_weight_decay(sgd)) == (0.2, 1e-4)  # 0.1 x 512 / 256
    adamw = parse_args(["--optimizer", "adamw"])
    assert (resolve_lr(adamw, world_size=8), resolve_weight_decay(adamw)) == (1e-3, 0.05)
    given = parse_args(["--lr", "0.3", "--weight-decay", "0"])
    assert (resolve_lr(given, world_size=8), resolve_weight_decay(given)) == (0.3, 0.0)
