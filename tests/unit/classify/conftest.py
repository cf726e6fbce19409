"""Fixtures for the built-in trainer's tests."""

import pytest

from support.classify_data import digits, write_image_folder


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """All 1,797 digits as an ImageFolder tree of PNGs (written once per session)."""
    images, labels = digits()
    return write_image_folder(tmp_path_factory.mktemp("digits") / "train", images, labels)
