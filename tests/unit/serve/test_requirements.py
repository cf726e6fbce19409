"""code/requirements.txt: installed at start unless turned off; offline from code/wheelhouse."""
import base64
import hashlib
import subprocess
import sys
import zipfile

import pytest

from serve import requirements


def write_wheel(folder, name="byoc_extra", version="0.1"):
    """A minimal pure-Python wheel, made by hand (no build backend, no network)."""
    files = {
        f"{name}/__init__.py": "ANSWER = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def model_with_requirements(tmp_path, lines):
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True)
    (code / "requirements.txt").write_text(lines)
    return tmp_path / "model"


def test_no_requirements_installs_nothing(tmp_path):
    (tmp_path / "model" / "code").mkdir(parents=True)
    assert requirements.install(str(tmp_path / "model"), str(tmp_path / "work"), False) is None


def test_turned_off_the_requirements_are_left_alone(tmp_path, caplog):
    model = model_with_requirements(tmp_path, "byoc_extra==0.1\n")
    write_wheel(model / "code" / "wheelhouse")
    with caplog.at_level("INFO"):
        assert requirements.install(str(model), str(tmp_path / "site"), False) is None
    assert not (tmp_path / "site").exists()
    assert "BYOC_INSTALL_REQUIREMENTS=false" in caplog.text


def test_requirements_install_offline_from_the_wheelhouse(tmp_path):
    model = model_with_requirements(tmp_path, "byoc_extra==0.1\n")
    write_wheel(model / "code" / "wheelhouse")
    site = requirements.install(str(model), str(tmp_path / "site"), True)
    assert site == str(tmp_path / "site")
    probe = subprocess.run([sys.executable, "-c", "import byoc_extra; print(byoc_extra.ANSWER)"],
                           env={"PYTHONPATH": site}, capture_output=True, text=True)
    assert probe.stdout.strip() == "42", probe.stderr


def test_a_failing_install_says_why(tmp_path):
    model = model_with_requirements(tmp_path, "not_in_the_wheelhouse==9.9\n")
    write_wheel(model / "code" / "wheelhouse")
    with pytest.raises(requirements.RequirementsError, match="not_in_the_wheelhouse") as failed:
        requirements.install(str(model), str(tmp_path / "site"), True)
    assert "pip install -r code/requirements.txt failed" in str(failed.value)


def test_an_install_replaces_what_the_folder_held(tmp_path):
    # pip --target leaves a package already in the folder: a model loaded again under its name
    # with a new requirements.txt would run the old one
    site = tmp_path / "site"
    (site / "byoc_extra").mkdir(parents=True)
    (site / "byoc_extra" / "__init__.py").write_text("ANSWER = 'old'\n")
    (site / "leftover").mkdir()
    model = model_with_requirements(tmp_path, "byoc_extra==0.2\n")
    write_wheel(model / "code" / "wheelhouse", version="0.2")
    assert requirements.install(str(model), str(site), True) == str(site)
    assert not (site / "leftover").exists()
    assert (site / "byoc_extra" / "__init__.py").read_text() == "ANSWER = 42\n"
