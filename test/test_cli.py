"""The `affordance-clip` command end to end: infer and params."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import skimage.data
from PIL import Image

from affordance_clip_ros.cli import main

TINY_ARGS = ["--clip-model", "RN-tiny", "--clip-pretrained", "none", "--device", "cpu"]


def test_infer_writes_every_output_for_a_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    coffee = skimage.data.coffee()
    cv2.imwrite(str(images / "coffee.png"), cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(images / "rocket.jpg"), cv2.cvtColor(skimage.data.rocket(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    # threshold 0: random weights score every pixel about alike, below the default threshold for "hold"
    assert main(["infer", str(images), "-p", "drink with", "-p", "hold", "--out", str(out), "--peak-threshold", "0",
                 *TINY_ARGS]) == 0
    for stem in ("coffee_drink_with", "coffee_hold", "rocket_drink_with", "rocket_hold"):
        for suffix in ("_heatmap.npy", "_heatmap.png", "_overlay.png"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    heatmap = np.load(out / "coffee_hold_heatmap.npy")
    assert heatmap.shape == coffee.shape[:2] and heatmap.dtype == np.float32
    assert cv2.imread(str(out / "coffee_hold_overlay.png")).shape == coffee.shape
    records = {r["image"]: r for r in json.loads((out / "peaks.json").read_text())}
    assert set(records) == {"coffee", "rocket"}
    peaks = records["coffee"]["prompts"]["hold"]
    assert peaks and all(0 <= p["u"] < 600 and 0 <= p["v"] < 400 for p in peaks)
    assert [p["score"] for p in peaks] == sorted((p["score"] for p in peaks), reverse=True)
    assert abs(heatmap[peaks[0]["v"], peaks[0]["u"]] - peaks[0]["score"]) < 1e-5


def test_infer_turns_a_photo_upright_by_its_exif_orientation_and_keeps_all_outputs_in_that_frame(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 rows x 100 columns, shown turned 90 degrees clockwise: 100 x 60
    Image.fromarray(np.full((60, 100, 3), 128, np.uint8)).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "phone.jpg"), "-p", "hold", "--out", str(out), "--backend", "torch",
                 *TINY_ARGS]) == 0
    [record] = json.loads((out / "peaks.json").read_text())
    assert (record["height"], record["width"]) == (100, 60)
    assert np.load(out / "phone_hold_heatmap.npy").shape == (100, 60)
    assert cv2.imread(str(out / "phone_hold_overlay.png")).shape == (100, 60, 3)


def test_infer_reports_a_missing_input_and_missing_checkpoint_clearly(tmp_path, caplog):
    assert main(["infer", str(tmp_path / "none.png"), "-p", "hold", "--out", str(tmp_path), *TINY_ARGS]) == 2
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert main(["infer", str(image), "-p", "hold", "--out", str(tmp_path), *TINY_ARGS,
                 "--fpn-checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    err = caplog.text
    assert "neither an image file nor a folder" in err and "fpn_checkpoint" in err


def test_params_prints_the_paper_parameter_count():
    result = subprocess.run([sys.executable, "-m", "affordance_clip_ros.cli", "params"], capture_output=True,
                            text=True, check=True)
    assert "2.69 M" in result.stdout, result.stdout
    one = subprocess.run([sys.executable, "-m", "affordance_clip_ros.cli", "params", "--levels", "1"],
                         capture_output=True, text=True, check=True)
    assert "levels=1" in one.stdout and "1.70 M" in one.stdout
