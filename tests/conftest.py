"""Shared fixtures: a tiny synthetic data folder with the collections' layout; what a notebook shows."""
import pytest

from xray_transfer.data import synthetic_collections


@pytest.fixture
def cxr_dir(tmp_path):
    """A fresh fake data folder (6 Cohen + 1 Figure 1 COVID-19, 6 normal, 6 bacterial)."""
    return synthetic_collections(tmp_path / "cxr")


def notebook_texts(nb):
    """Every text an executed notebook shows: streams, plain text and markdown outputs, and the
    glued tables its {glue:md} directives show."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                yield out["text"]
            for mime in ("text/plain", "text/markdown", "text/html",
                         "application/papermill.record/text/markdown"):  # tables glued for {glue:md}
                if mime in out.get("data", {}):
                    yield out["data"][mime]
