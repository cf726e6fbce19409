"""`serve`'s entry (serve/__main__.py) stopping at once, with the reason last, on what it
checks before anything starts."""
from __future__ import annotations

import logging

from serve import __main__ as serve_main


def test_an_unusable_workdir_stops_serve_with_a_one_line_reason(tmp_path, monkeypatch, caplog):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    monkeypatch.setenv("BYOC_SERVE_WORKDIR", str(taken / "work"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="serve"):
        assert serve_main.main(["serve"]) == 1
    last = caplog.records[-1].getMessage()
    assert "BYOC_SERVE_WORKDIR" in last and str(taken / "work") in last and "Not a directory" in last


def test_the_reason_it_stops_is_logged_at_the_highest_log_level(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SAGEMAKER_CONTAINER_LOG_LEVEL", "50")
    monkeypatch.setenv("BYOC_SERVE_WORKDIR", str(tmp_path))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "none"))
    caplog.set_level(logging.CRITICAL)   # what the user's level 50 leaves
    assert serve_main.main(["serve"]) == 1
    assert caplog.records and "SM_MODEL_DIR" in caplog.records[-1].getMessage()
