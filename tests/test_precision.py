"""bfloat16 against float32: which float32 run a bfloat16 run is paired with, and what it refuses."""
import pytest

from xray_transfer import precision as P
from test_robustness import write_run  # synthetic run folders whose metrics are known by hand

BF16 = "artifacts/precision/vgg19/mixed_bfloat16"
GPU = dict(_backend="jax", _device="gpu: NVIDIA H200")


def test_a_bfloat16_run_is_paired_with_the_float32_run_made_on_its_own_backend_and_device(tmp_path):
    write_run(tmp_path, "artifacts/runs/vgg19", [5] * 10)  # Table 2's run: TensorFlow on a CPU
    write_run(tmp_path, "artifacts/robustness/vgg19/backend-jax", [5] * 10, **GPU)
    write_run(tmp_path, BF16, [6] * 10, precision="mixed_bfloat16", **GPU)  # +10 pp in every fold
    got = P.load_comparisons(tmp_path, ["vgg19"])["vgg19"]
    assert got["float32"] == "artifacts/robustness/vgg19/backend-jax"
    assert got["devices"] == "jax / gpu: NVIDIA H200"
    row = got["table"].set_index("metric").loc["3-class accuracy"]
    assert (row["float32"], row["mixed_bfloat16"], row["n"]) == (pytest.approx(50), pytest.approx(60), 10)
    assert (row["mean"], row["low"], row["high"]) == pytest.approx((10, 10, 10))


def test_a_bfloat16_run_without_a_like_float32_run_is_not_compared_and_the_note_says_why(tmp_path):
    write_run(tmp_path, "artifacts/runs/vgg19", [5] * 10)
    write_run(tmp_path, BF16, [6] * 10, precision="mixed_bfloat16", **GPU)
    note = P.load_comparisons(tmp_path, ["vgg19"])["vgg19"]["note"]
    assert "in more than the precision" in note
    assert "made on tensorflow / cpu: test and on jax / gpu: NVIDIA H200" in note
    assert str(tmp_path) not in note  # repository paths, not this machine's


@pytest.mark.parametrize("make, note", [
    (lambda root: None, "not run yet"),
    (lambda root: write_run(root, BF16, [6] * 3, precision="mixed_bfloat16", **GPU), "3 of 10 folds so far"),
    (lambda root: write_run(root, BF16, [6] * 10, precision="mixed_bfloat16", learning_rate=1e-3, **GPU),
     "other parameters"),
])
def test_missing_partial_or_otherwise_different_bfloat16_runs_are_named(tmp_path, make, note):
    write_run(tmp_path, "artifacts/robustness/vgg19/backend-jax", [5] * 10, **GPU)
    make(tmp_path)
    assert note in P.load_comparisons(tmp_path, ["vgg19"])["vgg19"]["note"]


def test_compare_refuses_an_incomplete_run(tmp_path):
    full = P.load_run(write_run(tmp_path, "a", [5] * 10, **GPU))
    part = P.load_run(write_run(tmp_path, "b", [5] * 4, precision="mixed_bfloat16", **GPU))
    with pytest.raises(P.NotComparable, match="is not complete"):
        P.compare(full, part)
