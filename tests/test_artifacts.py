"""Every committed run artifact says what made it: parameters, data manifest, weights, versions, commit."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ART = REPO / "artifacts"
DATASET = json.loads((ART / "dataset" / "dataset.json").read_text())
RECORDS = sorted([*ART.glob("runs/*/run.json"), *ART.glob("audit/*/run.json"), *ART.glob("models/*.json")])


def test_there_are_records_to_check():
    assert len(list(ART.glob("runs/*/run.json"))) == 5 and len(list(ART.glob("models/*.json"))) == 5


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: str(p.relative_to(ART)))
def test_run_and_model_records_carry_full_provenance(path):
    rec = json.loads(path.read_text())
    assert rec["params"]["backbone"] and rec["params"]["epochs"] >= 1
    assert rec["dataset"]["manifest_sha256"] == DATASET["manifest_sha256"], "made from another dataset"
    w = rec["weights"]
    assert w["kind"] in ("none", "partial imagenet file", "imagenet (keras download)", "file")
    if w["kind"] != "none":
        assert len(w["sha256"]) == 64 and w["file"]
    env = rec["environment"]
    assert len(env["git"]["commit"]) == 40, "no git commit recorded"
    assert env["git"]["dirty"] is not True, "made from uncommitted library or chapter code"
    assert env["versions"]["keras"] and env["device"] and env["backend"]


def test_dataset_and_benchmark_records_carry_provenance():
    assert len(DATASET["manifest_sha256"]) == 64
    assert len(DATASET["git"]["commit"]) == 40 and DATASET["versions"]["pillow"]
    bench = json.loads((ART / "benchmark" / "benchmark.json").read_text())
    assert bench["manifest_sha256"] == DATASET["manifest_sha256"]
    assert bench["epochs"] >= 1 and bench["n_images"] > 0 and bench["weights"]
    assert len(bench["environment"]["git"]["commit"]) == 40 and bench["environment"]["git"]["dirty"] is not True
