"""Shared fixtures: a tiny synthetic data folder with the collections' layout."""
import pytest

from xray_transfer.data import synthetic_collections


@pytest.fixture
def cxr_dir(tmp_path):
    """A fresh fake data folder (6 Cohen + 1 Figure 1 COVID-19, 6 normal, 6 bacterial)."""
    return synthetic_collections(tmp_path / "cxr")
