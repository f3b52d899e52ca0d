"""Smoke test of the training chapter: papermill runs notebooks/training.md on a tiny synthetic dataset.

Runs by default (CI executes it); about a minute on 2 CPU cores.
"""
import json
from pathlib import Path

import jupytext
import numpy as np
import papermill
import pytest
from conftest import notebook_texts

from xray_transfer import data, metrics, train

REPO = Path(__file__).resolve().parents[1]
CHAPTER = REPO / "notebooks" / "training.md"
H, W = 40, 53



@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chapter")
    cxr = data.synthetic_collections(tmp / "cxr")
    info = data.assemble(cxr, tmp / "dataset", size=(W, H), counts={"covid": 6, "normal": 6, "pneumonia": 6},
                         progress=False)
    assert info["counts"] == {"covid": 6, "normal": 6, "pneumonia": 6}
    src = tmp / "training.ipynb"
    jupytext.write(jupytext.read(CHAPTER), src)
    out_nb, run = tmp / "executed.ipynb", tmp / "run"
    papermill.execute_notebook(
        str(src), str(out_nb), cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
        parameters=dict(backbone="vgg19", dataset_dir=str(tmp / "dataset"), n_splits=2, epochs=1,
                        batch_size=4, image_height=H, image_width=W, output_dir=str(run)))
    import nbformat
    return {"nb": nbformat.read(out_nb, as_version=4), "run": run, "dataset": tmp / "dataset"}


def test_training_chapter_executes_without_errors(executed):
    nb = executed["nb"]
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, errors
    assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"


def test_training_chapter_warns_about_reduced_settings(executed):
    shown = "\n".join(notebook_texts(executed["nb"]))
    assert "reduced settings" in shown
    assert "2 folds, 1 epochs, 18 images" in shown
    assert "fast path: True" in shown  # vgg19 freezes 18 of 22 layers


def test_training_chapter_writes_run_artifacts_with_its_parameters(executed):
    run = executed["run"]
    assert sorted(p.name for p in run.iterdir()) == ["fold-00.json", "fold-01.json", "folds.csv", "run.json"]
    rec = json.loads((run / "run.json").read_text())
    assert rec["params"]["backbone"] == "vgg19"
    assert (rec["params"]["n_splits"], rec["params"]["epochs"], rec["params"]["batch_size"]) == (2, 1, 4)
    assert rec["params"]["image_size"] == [H, W]
    assert rec["dataset"]["manifest_sha256"] == data.manifest_hash(executed["dataset"] / "manifest.csv")
    assert rec["dataset"]["counts"] == [6, 6, 6]
    assert rec["full_protocol"] is False


def test_training_chapter_metrics_follow_from_saved_predictions(executed):
    folds = train.load_folds(executed["run"])
    y_true = np.concatenate([f["y_true"] for f in folds])
    y_pred = np.concatenate([np.asarray(f["probs"]).argmax(1) for f in folds])
    assert len(y_true) == 18
    summary = metrics.pooled(folds)
    assert summary["accuracy_3class"] == pytest.approx(np.mean(y_pred == y_true))
    assert summary["confusion"] == metrics.confusion(y_true, y_pred).tolist()
    c = metrics.binary_counts(y_true, y_pred)
    assert {k: summary[k] for k in c} == c
    # the table the chapter showed carries the same 3-class accuracy
    shown = "\n".join(notebook_texts(executed["nb"]))
    assert f"{100 * summary['accuracy_3class']:.1f}" in shown


def test_training_chapter_reports_an_unfinished_run_without_training(executed, tmp_path):
    """run_folds=False renders the folds already there (a run in progress) and trains nothing."""
    src = tmp_path / "training.ipynb"
    jupytext.write(jupytext.read(CHAPTER), src)
    run = tmp_path / "run"
    params = dict(backbone="vgg19", dataset_dir=str(executed["dataset"]), n_splits=2, epochs=1, batch_size=4,
                  image_height=H, image_width=W, output_dir=str(run), run_folds=False)
    papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), cwd=str(REPO / "notebooks"),
                               kernel_name="python3", progress_bar=False, parameters=params)
    import nbformat
    shown = "\n".join(notebook_texts(nbformat.read(tmp_path / "out.ipynb", as_version=4)))
    assert "Unfinished run: 0 of 2 folds done" in shown and "No fold has finished yet" in shown
    assert not list(run.glob("fold-*.json"))


def test_training_chapter_says_when_the_model_never_predicts_covid(executed):
    """A collapsed run (no held-out image called COVID-19) says so and points to the audit's
    BatchNorm section; any other run says how many images it called COVID-19."""
    folds = train.load_folds(executed["run"])
    called = int(np.asarray(metrics.pooled(folds)["confusion"])[:, data.CLASSES.index("covid")].sum())
    shown = "\n".join(notebook_texts(executed["nb"]))
    assert ("never predicts COVID-19" in shown) == (called == 0)
    assert ("audit-batchnorm" in shown) == (called == 0)
    if called:
        assert f"{called:,} were called COVID-19" in shown
