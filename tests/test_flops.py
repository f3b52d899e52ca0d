"""XLA's FLOP count of the steps a run executes (``xray_transfer.flops``), checked against arithmetic
done by hand on VGG19's convolutions. The counts come from JAX, so the check runs in a subprocess
(the suite's Keras runs on TensorFlow)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json
    from xray_transfer.flops import step_flops
    from xray_transfer.models import build_model
    from xray_transfer.train import make_config
    out = {}
    for bs in (2, 4):
        cfg = make_config(backbone="vgg19", weights="none", batch_size=bs, image_size=(32, 48))
        out[bs] = step_flops(cfg)
    # by hand: 2 * c_in * c_out per kernel tap that lands on the image (the zero padding of a 3x3
    # 'same' convolution leaves a border pixel 2 of its 3 taps per axis: 3n - 2 taps along an axis of n),
    # for each convolution below Table 1's cutoff (18 layers)
    model = build_model("vgg19", input_shape=(32, 48, 3), weights="none")
    conv = 0
    for layer in model.layers[:18]:
        if type(layer).__name__ == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            assert (kh, kw) == (3, 3) and layer.padding == "same"
            conv += 2 * (3 * h - 2) * (3 * w - 2) * c_in * c_out
    out["conv_per_image"] = conv
    print("RESULT" + json.dumps(out))
""")


def test_vgg19_frozen_step_counts_its_convolutions_and_counts_scale_with_the_batch():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    two, four = out["2"], out["4"]
    assert two["fast_path"] and two["frozen_step"] > 0  # VGG19 has no BatchNorm: its frozen part is cached
    # the frozen part is its convolutions, plus the bias, ReLU and pooling around them (under 2 %)
    assert 1.0 <= two["frozen_step"] / (2 * out["conv_per_image"]) < 1.02
    assert four["frozen_step"] == pytest.approx(2 * two["frozen_step"], rel=1e-3)  # twice the images, twice the work
    assert two["train_step"] > two["predict_step"] > 0  # training also runs the backward pass


def test_the_count_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    from xray_transfer import flops

    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    assert flops.main(["--out", str(other), "--backbones", "vgg19"]) == 1
    assert other.read_text() == '{"mine": 1}'
    assert "is not a FLOP count of this command, so it is left alone" in capsys.readouterr().err
