"""Smoke test of the audit chapter: papermill runs notebooks/audit.md on tiny synthetic runs.

Some runs and models exist, others not: the chapter must show what exists, mark what is
missing as pending, and never put an unfinished run in a table. About a minute on 2 CPU cores.
"""
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import papermill
import pytest
from conftest import notebook_texts

from xray_transfer import audit, data, train

REPO = Path(__file__).resolve().parents[1]
CHAPTER = REPO / "notebooks" / "audit.md"
H, W = 40, 53
TINY = dict(n_splits=2, epochs=1, batch_size=4, image_size=(H, W), weights="none")



@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    cxr = data.synthetic_collections(tmp / "cxr")
    data.assemble(cxr, tmp / "dataset", size=(W, H), counts={"covid": 6, "normal": 6, "pneumonia": 6},
                  progress=False)
    ds = data.load_dataset(tmp / "dataset")
    runs, audit_dir = tmp / "runs", tmp / "audit"
    train.cross_validate(ds, runs / "mobilenet", progress=False, backbone="mobilenet", **TINY)
    train.cross_validate(ds, runs / "vgg19", progress=False, backbone="vgg19", **TINY)
    train.cross_validate(ds, audit_dir / "grouped-mobilenet", progress=False, backbone="mobilenet",
                         group_by_patient=True, **TINY)
    train.cross_validate(ds, audit_dir / "bn-inference-mobilenet", progress=False, backbone="mobilenet",
                         batchnorm="inference", **TINY)
    # an unfinished run: one fold of two
    train.cross_validate(ds, audit_dir / "lungs-hidden-in-frame-mobilenet", progress=False, folds_to_run=[0],
                         backbone="mobilenet", image_mask="lungs_hidden_in_frame", **TINY)
    train.fit_final(ds, tmp / "models" / "mobilenet.keras", progress=False, backbone="mobilenet",
                    **{k: v for k, v in TINY.items() if k != "n_splits"})
    # VGG19's model file is absent, but this page committed its predictions and its record names the
    # same model: the page uses them. Inception v3 has neither: pending.
    adults = audit.adult_non_covid(cxr)
    (audit_dir / f"adult-non-covid-vgg19.csv").write_text("file,p_covid,p_normal,p_pneumonia,predicted,error\n" + "".join(
        f"{k:03d}_{a['path'].name},1.0,0.0,0.0,covid,\n" for k, a in enumerate(adults)))
    vgg_record = json.loads((tmp / "models" / "mobilenet.json").read_text())
    vgg_record.update(model_sha256="1" * 64, model_file="vgg19.keras")
    vgg_record["params"]["backbone"] = "vgg19"
    (tmp / "models" / "vgg19.json").write_text(json.dumps(vgg_record))
    (audit_dir / "audit-inputs.json").write_text(json.dumps({"runs": {}, "models": {"vgg19": "1" * 64}, "pending": []}))
    src = tmp / "audit.ipynb"
    jupytext.write(jupytext.read(CHAPTER), src)
    papermill.execute_notebook(
        str(src), str(tmp / "executed.ipynb"), cwd=str(REPO / "notebooks"), kernel_name="python3",
        progress_bar=False,
        parameters=dict(data_dir=str(cxr), dataset_dir=str(tmp / "dataset"), runs_dir=str(runs),
                        audit_dir=str(audit_dir), models_dir=str(tmp / "models"), output_dir=str(tmp / "out"),
                        records_dir=str(tmp / "models"), confound_backbones=["mobilenet", "vgg19", "inception_v3"], saliency_backbone="mobilenet",
                        saliency_per_class=1, batchnorm_backbones=["mobilenet"]))
    return {"nb": nbformat.read(tmp / "executed.ipynb", as_version=4), "tmp": tmp}


def test_audit_chapter_executes_with_some_runs_missing(executed):
    nb = executed["nb"]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_audit_chapter_marks_missing_and_unfinished_runs_pending(executed):
    shown = "\n".join(notebook_texts(executed["nb"]))
    assert "1 of 2 folds" in shown  # the unfinished lungs-hidden run is listed with its status
    assert "not run" in shown  # grouped-vgg19 and the batch_statistics run do not exist
    # the comparison's sentence names the pair it cannot make yet, beside the one it makes
    assert "VGG19's patient-grouped run is not complete yet (not run;" in shown
    assert "moves by" in shown
    assert "Not yet measured on the current runs" in shown
    assert "make final-inception_v3" in shown  # the missing final model is named
    assert "make final-vgg19" not in shown  # its committed predictions stand in for it


def test_audit_chapter_prints_no_stray_values(executed):
    """Every text/plain output is a figure's or table's stand-in, never a bare value such as a count
    of bytes written."""
    stray = [o["data"]["text/plain"] for c in executed["nb"].cells for o in c.get("outputs", [])
             if o.get("output_type") == "execute_result" and "text/markdown" not in o.get("data", {})
             and "image/png" not in o.get("data", {})]
    assert not stray, stray


def test_audit_chapter_scores_come_from_the_runs(executed):
    shown = "\n".join(notebook_texts(executed["nb"]))
    grouped = audit.run_summary(executed["tmp"] / "audit" / "grouped-mobilenet")["pooled"]
    assert f"{100 * grouped['accuracy_3class']:.1f}" in shown
    # the summary states what patient-grouped folds and the BatchNorm mode did, from the same runs
    image_level = audit.run_summary(executed["tmp"] / "runs" / "mobilenet")["pooled"]
    change = 100 * (grouped["accuracy_3class"] - image_level["accuracy_3class"])
    assert (f"- Keeping each patient on one side of every split moves MobileNet v1's 3-class accuracy by "
            f"{change:+.1f} percentage points") in shown
    inference = audit.run_summary(executed["tmp"] / "audit" / "bn-inference-mobilenet")["pooled"]
    low, high = sorted(100 * r["accuracy_3class"] for r in (image_level, inference))
    assert (f"- The BatchNormalization mode alone moves MobileNet v1's 3-class accuracy between {low:.1f} %") in shown
    assert f"and {high:.1f} %" in shown
    assert audit.run_summary(executed["tmp"] / "audit" / "lungs-hidden-in-frame-mobilenet")["pooled"] is None
    calls = pd.read_csv(executed["tmp"] / "out" / "adult-non-covid-mobilenet.csv")["predicted"]
    assert "  - Called COVID-19\n" in shown  # the class's name as written everywhere, not "Called covid-19"
    one_class = calls.nunique() == 1 and calls.iloc[0] != "covid"
    # a model that calls every adult X-ray one other class: the summary says the probe cannot tell
    assert (f"calls every one of them {calls.iloc[0]}, so this probe cannot tell" in shown) == one_class


def test_scores_table_refuses_runs_on_another_dataset(executed):
    with pytest.raises(ValueError, match="made on dataset .* re-run it on the current dataset"):
        audit.scores_table({"x": executed["tmp"] / "runs" / "mobilenet"}, manifest_sha256="f" * 64)
    with pytest.raises(ValueError, match="made on dataset"):
        audit.run_summary(executed["tmp"] / "runs" / "mobilenet", manifest_sha256="f" * 64)


def test_audit_page_records_what_it_read_and_a_check_sees_artifacts_move_on(executed):
    tmp = executed["tmp"]
    record = json.loads((tmp / "out" / "audit-inputs.json").read_text())
    assert record["runs"]["audit/grouped-mobilenet"] == 2 and record["runs"]["audit/lungs-hidden-in-frame-mobilenet"] == 1
    assert record["models"]["mobilenet"] and record["models"]["inception_v3"] is None
    assert record["models"]["vgg19"] == "1" * 64  # the committed predictions' model
    # what the page could not measure, in its own words, for the landing page
    assert any(p.startswith("MobileNet v1, lungs hidden") and "(1 of 2 folds)" in p for p in record["pending"])
    assert any("make final-inception_v3" in p for p in record["pending"])
    assert audit.stale_inputs(record, tmp) == []  # the tree it read: nothing moved
    moved = json.loads(json.dumps(record))
    moved["runs"]["audit/lungs-hidden-in-frame-mobilenet"] = 0  # a fold landed after the page ran
    del moved["runs"]["audit/grouped-mobilenet"]  # an audit run the page never read
    moved["models"]["inception_v3"] = "0" * 64  # a model that is not there any more
    stale = audit.stale_inputs(moved, tmp)
    assert any("lungs-hidden-in-frame-mobilenet: the page read 0 folds, artifacts/ has 1" in s for s in stale)
    assert "audit/grouped-mobilenet: not read by the page" in stale
    assert any(s.startswith("models/inception_v3") for s in stale)


def test_a_run_on_folds_another_scikit_learn_drew_says_so_and_keeps_its_scores(executed, tmp_path):
    import shutil

    run = tmp_path / "grouped-mobilenet"
    shutil.copytree(executed["tmp"] / "audit" / "grouped-mobilenet", run)
    assert audit.run_summary(run)["status"] == "complete"
    head, *rows = (run / "folds.csv").read_text().splitlines()
    (run / "folds.csv").write_text("\n".join([head, *(r[:-1] + str(1 - int(r[-1])) for r in rows)]) + "\n")
    record = json.loads((run / "run.json").read_text())
    record["environment"]["versions"]["scikit-learn"] = "1.7.2"
    (run / "run.json").write_text(json.dumps(record))
    summary = audit.run_summary(run)
    assert summary["status"] == "complete, on scikit-learn 1.7.2's folds"
    assert summary["pooled"] is not None  # a complete patient-grouped cross-validation all the same


def test_audit_chapter_uses_committed_predictions_only_for_the_model_its_record_names(executed):
    shown = "\n".join(notebook_texts(executed["nb"]))
    n = len(audit.adult_non_covid(executed["tmp"] / "cxr"))
    assert f"VGG19: {n} of {n} (100 %)" in shown  # every committed call is COVID-19
    assert "The model files of VGG19 are not on the machine that executed this page" in shown
    assert audit.committed_predictions("vgg19", executed["tmp"] / "audit", executed["tmp"] / "models")
    # another model under the same name: its record no longer matches, so the predictions do not count
    assert audit.committed_predictions("vgg19", executed["tmp"] / "audit", executed["tmp"] / "nowhere") is None
    record = json.loads((executed["tmp"] / "models" / "vgg19.json").read_text())
    other = executed["tmp"] / "other-models"
    other.mkdir(exist_ok=True)
    (other / "vgg19.json").write_text(json.dumps({**record, "model_sha256": "2" * 64}))
    assert audit.committed_predictions("vgg19", executed["tmp"] / "audit", other) is None


def test_saliency_says_how_many_wrong_calls_are_the_batchnorm_artefact(executed):
    shown = "\n".join(notebook_texts(executed["nb"]))
    m = re.search(r"calls (\d+) of its (\d+) training images wrong when it is scored as usual, with its "
                  r"BatchNormalization moving averages, and (\d+) with the batch statistics", shown)
    assert m, "the saliency section does not say how many wrong calls remain with batch statistics"
    # the same numbers as section 5's table, which the page computes from the same calls
    assert f"With its moving averages it calls {m.group(1)} of its {m.group(2)} training images wrong; with batch " \
           f"statistics, {m.group(3)}." in shown
