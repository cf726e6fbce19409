"""hadolint and shellcheck stay clean (the same checks as ./build.sh lint)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_dockerfiles_are_hadolint_clean():
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    assert len(files) == 2
    out = subprocess.run([str(BIN / "hadolint"), "--config", str(ROOT / ".hadolint.yaml"), *files],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shell_scripts_are_shellcheck_clean():
    scripts = [ROOT / "build.sh", ROOT / ".ci/run", *(ROOT / "docker").rglob("*.sh"),
               *(ROOT / "scripts").glob("*.sh"), *(ROOT / "bench").glob("*.sh")]
    out = subprocess.run([str(BIN / "shellcheck"), "-x", "-P", str(ROOT), *map(str, scripts)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
