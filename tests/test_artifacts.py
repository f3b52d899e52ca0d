"""Every committed run artifact says what made it: parameters, data manifest, weights, versions, commit.

Two generations live in ``artifacts/``: the current one (every record on the current dataset,
``artifacts/dataset``) and ``artifacts/earlier-1426/``, the runs made before the shared data
had all 504 normals (1426 images; VGG19, Xception and Inception ResNet v2 from random
weights), kept for comparison. A record of one generation never carries the other's dataset.
"""
import json
from pathlib import Path

import pytest

from xray_transfer import models

REPO = Path(__file__).resolve().parents[1]
ART = REPO / "artifacts"
EARLIER = ART / "earlier-1426"
DATASET = json.loads((ART / "dataset" / "dataset.json").read_text())
EARLIER_MANIFEST = "5b3032734b2c671a168233ff664d1646dd8e42324e9dbffe5b8bfc0b9ed0f971"


def records(root):
    return sorted([*root.glob("runs/*/run.json"), *root.glob("audit/*/run.json"), *root.glob("models/*.json")])


CURRENT, OLD = records(ART), records(EARLIER)


def test_current_dataset_is_the_papers_1428_images():
    assert DATASET["counts"] == {"covid": 224, "normal": 504, "pneumonia": 700}
    assert DATASET["shortfall"] == {} and DATASET["manifest_sha256"] != EARLIER_MANIFEST


def test_there_are_records_to_check():
    assert len(list(EARLIER.glob("runs/*/run.json"))) == 5 and len(list(EARLIER.glob("models/*.json"))) == 5
    assert len(list(ART.glob("runs/*/run.json"))) == 5  # every paper run, finished or not, has its record


def check_record(path, manifest):
    rec = json.loads(path.read_text())
    assert rec["params"]["backbone"] and rec["params"]["epochs"] >= 1
    assert rec["dataset"]["manifest_sha256"] == manifest, "made from another dataset than its generation's"
    w = rec["weights"]
    assert w["kind"] in ("none", "partial imagenet file", "imagenet (keras download)", "file")
    if w["kind"] != "none":
        assert len(w["sha256"]) == 64 and w["file"]
    env = rec["environment"]
    assert len(env["git"]["commit"]) == 40, "no git commit recorded"
    assert env["git"]["dirty"] is not True, "made from uncommitted library or chapter code"
    assert env["versions"]["keras"] and env["device"] and env["backend"]
    return rec


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: str(p.relative_to(ART)))
def test_current_records_carry_the_current_manifest_and_registered_weights(path):
    rec = check_record(path, DATASET["manifest_sha256"])
    reg = models.OFFLINE_WEIGHTS.get(rec["params"]["backbone"])
    if reg is None:
        assert rec["weights"]["kind"] == "none"
    else:  # the file it started from is the registered one, with its missing and quantized tensors
        assert rec["weights"]["sha256"] == reg.sha256 and rec["weights"]["label"] == reg.label
        assert "missing_tensors" in rec["weights"] and "dequantized_tensors" in rec["weights"]


@pytest.mark.parametrize("path", OLD, ids=lambda p: str(p.relative_to(ART)))
def test_earlier_records_carry_the_earlier_manifest(path):
    check_record(path, EARLIER_MANIFEST)


def test_current_fold_files_belong_to_their_run():
    for run in [*ART.glob("runs/*/run.json"), *ART.glob("audit/*/run.json")]:
        ident = json.loads(run.read_text())["identity_sha256"]
        for fold in run.parent.glob("fold-*.json"):
            assert json.loads(fold.read_text())["run_identity_sha256"] == ident, fold


def test_dataset_and_benchmark_records_carry_provenance():
    assert len(DATASET["manifest_sha256"]) == 64
    assert len(DATASET["git"]["commit"]) == 40 and DATASET["versions"]["pillow"]
    for path, manifest in [(ART / "benchmark" / "benchmark.json", DATASET["manifest_sha256"]),
                           (ART / "benchmark" / "gpu" / "benchmark.json", DATASET["manifest_sha256"]),
                           (EARLIER / "benchmark" / "benchmark.json", EARLIER_MANIFEST)]:
        if not path.exists():
            continue
        bench = json.loads(path.read_text())
        assert bench["manifest_sha256"] == manifest
        assert bench["epochs"] >= 1 and bench["n_images"] > 0 and bench["weights"]
        assert len(bench["environment"]["git"]["commit"]) == 40 and bench["environment"]["git"]["dirty"] is not True


def test_current_benchmarks_have_every_field_the_results_chapter_reads():
    from xray_transfer.benchmark import check_record

    for path in [ART / "benchmark" / "benchmark.json", ART / "benchmark" / "gpu" / "benchmark.json"]:
        if path.exists():
            check_record(json.loads(path.read_text()))  # raises naming what is missing


def test_audit_page_was_executed_on_the_committed_runs_and_models():
    from xray_transfer.audit import stale_inputs

    record = json.loads((ART / "audit" / "audit-inputs.json").read_text())
    stale = stale_inputs(record, ART)
    assert not stale, ("artifacts/audit/audit.ipynb is older than what it reads; re-execute it (`make audit`):\n"
                       + "\n".join(stale))


def test_current_audit_page_shows_no_library_warnings():
    """The reader sees results, not TensorFlow's notes on its own speed (the chapter filters them)."""
    page = json.loads((ART / "audit" / "audit.ipynb").read_text())
    shown = [t for c in page["cells"] for o in c.get("outputs", []) for t in ["".join(o.get("text", ""))]
             if "WARNING:tensorflow" in t]
    assert not shown, shown[0][:300]


def test_every_committed_runs_identity_is_recomputed_unchanged():
    """Parameters added later (train.LATER_PARAMS) must not change a committed run's identity:
    recomputed from its own record, every run's identity hash is the one its folds carry."""
    import csv

    from xray_transfer import train

    runs = sorted([*ART.glob("runs/*/run.json"), *ART.glob("audit/*/run.json"), *ART.glob("robustness/*/*/run.json")])
    assert len(runs) >= 5
    for path in runs:
        rec = json.loads(path.read_text())
        cfg = train.make_config(**{**rec["params"], "weights": "none"})
        with open(path.parent / "folds.csv", newline="") as f:
            files = [r["file"] for r in csv.DictReader(f)]
        identity, sha = train.run_identity(cfg, rec["weights"], rec["dataset"]["manifest_sha256"], files)
        assert identity["params"] == rec["identity"]["params"], path
        assert sha == rec["identity_sha256"], path


def test_no_committed_artifact_names_a_machine_path():
    """Records keep paths relative to the repository or to $XRAY_DATA_DIR / $XRAY_WEIGHTS_DIR:
    a reader's clone has no /work/main, and the book shows some of these records."""
    from xray_transfer.provenance import MACHINE_PATH

    found = []
    for path in sorted(ART.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".ipynb", ".csv", ".jsonl", ".txt", ".md"):
            for m in MACHINE_PATH.finditer(path.read_text(errors="replace")):
                found.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not found, f"{len(found)} machine path(s) in artifacts/:\n" + "\n".join(found[:20])
