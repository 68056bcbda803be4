"""AGD20K reader and `affordance-clip evaluate` end to end on a small tree in the real layout."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from affordance_clip_ros.cli import main
from affordance_clip_ros.evaluation import AGD20KTestSet, affordance_prompt, find_testset, score_map
from affordance_clip_ros.evaluation import agd20k as agd20k_reader
from affordance_clip_ros.evaluation.evaluate import EvaluationResult, evaluate, subset_indices
from affordance_clip_ros.evaluation.report import markdown, paper_differences, write_json
from affordance_clip_ros.model import AffordanceFPN, AffordanceGrounder, FPNConfig, save_fpn

TINY_ARGS = ["--clip-model", "RN-tiny", "--clip-pretrained", "none", "--device", "cpu", "--input-size", "128"]
# (affordance, object, photo, has GT); the GT is a blob, except where marked "empty".
TREE = [
    ("cut_with", "knife", "coffee", True), ("cut_with", "knife", "rocket", False),
    ("drink_with", "cup", "coffee", True), ("drink_with", "cup", "chelsea", "empty"),
    ("hold", "cup", "astronaut", True), ("hold", "knife", "rocket", True), ("hold", "knife", "chelsea", False),
]


def blob(shape: tuple[int, int], seed: int) -> np.ndarray:
    """An 8-bit grey Gaussian heatmap like AGD20K's GT."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
    sigma = 0.12 * min(shape)
    return np.round(255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))).astype(np.uint8)


@pytest.fixture(scope="module")
def agd20k(tmp_path_factory) -> Path:
    """<tmp>/AGD20K/Seen/testset/{egocentric,GT}/<affordance>/<object>/ with jpg photos and png GTs."""
    root = tmp_path_factory.mktemp("data")
    testset = root / "AGD20K" / "Seen" / "testset"
    for i, (affordance, obj, photo, gt) in enumerate(TREE):
        image = cv2.resize(getattr(skimage.data, photo)(), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        folder = testset / "egocentric" / affordance / obj
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{obj}_{i:06d}"
        cv2.imwrite(str(folder / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if gt:
            gt_folder = testset / "GT" / affordance / obj
            gt_folder.mkdir(parents=True, exist_ok=True)
            heat = np.zeros(image.shape[:2], np.uint8) if gt == "empty" else blob(image.shape[:2], i)
            cv2.imwrite(str(gt_folder / f"{name}.png"), heat)
    (testset / "egocentric" / "hold" / "cup" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------- reader
def test_reader_lists_only_images_with_a_gt_and_builds_prompts(agd20k):
    test_set = AGD20KTestSet(agd20k / "AGD20K", "Seen")
    assert [s.key for s in test_set.samples] == ["cut_with/knife/knife_000000.jpg", "drink_with/cup/cup_000002.jpg",
                                                 "drink_with/cup/cup_000003.jpg", "hold/cup/cup_000004.jpg",
                                                 "hold/knife/knife_000005.jpg"]
    assert [s.prompt for s in test_set.samples] == ["cut with", "drink with", "drink with", "hold", "hold"]
    assert sorted(p.name for p in test_set.skipped) == ["knife_000001.jpg", "knife_000006.jpg"]
    assert test_set.affordances == ["cut_with", "drink_with", "hold"] and not test_set.is_complete
    image, gt = test_set.load(0)
    assert image.dtype == np.uint8 and image.ndim == 3 and gt.dtype == np.uint8 and gt.shape == image.shape[:2]
    templated = AGD20KTestSet(agd20k, "seen", prompt_template="a photo of something to {}")
    assert templated[0].prompt == "a photo of something to cut with"
    assert affordance_prompt("take_photo") == "take photo"
    with pytest.raises(ValueError, match="exactly one"):
        affordance_prompt("hold", "no placeholder")


def test_reader_accepts_the_parent_agd20k_or_the_split_folder(agd20k):
    expected = agd20k / "AGD20K" / "Seen" / "testset"
    for root in (agd20k, agd20k / "AGD20K", agd20k / "AGD20K" / "Seen"):
        assert find_testset(root, "seen") == expected


def test_reader_errors_show_the_expected_layout(agd20k, tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"AGD20K/Seen/testset/egocentric/<affordance>/<object>/"):
            find_testset(root, "seen")
    with pytest.raises(FileNotFoundError, match="Unseen"):
        find_testset(agd20k, "unseen")
    with pytest.raises(ValueError, match="is the Seen split but --split unseen"):
        find_testset(agd20k / "AGD20K" / "Seen", "unseen")
    with pytest.raises(ValueError, match="unknown AGD20K split"):
        find_testset(agd20k, "test")


def write_exif_rotated_jpeg(path: Path, rgb: np.ndarray) -> None:
    """``rgb`` stored as is, tagged with EXIF orientation 6 (viewers turn it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95)


def test_images_are_read_in_the_ground_truths_frame_and_a_size_mismatch_names_the_files(tmp_path):
    testset = tmp_path / "AGD20K" / "Seen" / "testset"
    for folder in ("egocentric", "GT"):
        (testset / folder / "hold" / "cup").mkdir(parents=True)
    stored = np.zeros((40, 100, 3), np.uint8)
    stored[:, :20] = 255  # a bar on the left of the stored pixels, where the GT marks it
    write_exif_rotated_jpeg(testset / "egocentric" / "hold" / "cup" / "a.jpg", stored)
    cv2.imwrite(str(testset / "GT" / "hold" / "cup" / "a.png"), stored[..., 0])
    cv2.imwrite(str(testset / "egocentric" / "hold" / "cup" / "b.jpg"), stored)
    cv2.imwrite(str(testset / "GT" / "hold" / "cup" / "b.png"), stored[:30, :, 0])
    test_set = AGD20KTestSet(tmp_path, "seen")
    image, gt = test_set.load(0)
    assert image.shape == (40, 100, 3) and gt.shape == (40, 100)  # OpenCV alone would give 100 x 40
    assert image[:, :18].min() > 200 and image[:, 22:].max() < 50
    with pytest.raises(ValueError, match=r"(?s)b\.jpg' is 100x40 pixels but its ground truth '.*b\.png' is 100x30"):
        test_set.load(1)


def test_a_split_without_the_papers_affordance_and_image_counts_is_reported(agd20k, caplog, monkeypatch):
    test_set = AGD20KTestSet(agd20k, "seen")
    assert not test_set.is_complete
    assert "has 3 affordance(s) with 5 scored image(s), the paper's split has 36 with 1675" in caplog.text
    caplog.clear()
    monkeypatch.setitem(agd20k_reader.EXPECTED_IMAGES, "seen", 5)
    assert not AGD20KTestSet(agd20k, "seen").is_complete and "has 3 affordance(s)" in caplog.text
    caplog.clear()
    monkeypatch.setitem(agd20k_reader.EXPECTED_AFFORDANCES, "seen", 3)
    assert AGD20KTestSet(agd20k, "seen").is_complete and "affordance(s)" not in caplog.text


def test_only_the_papers_setting_is_comparable_with_the_paper(tiny_grounder):
    full = EvaluationResult("unseen", [{}] * 540, {}, {}, {}, {})
    paper = {"mode": "fpn", "levels": 3, "clip_model": "RN101", "clip_pretrained": "openai", "input_size": 416,
             "precision": "fp32"}
    assert paper_differences(full, paper) == []
    assert paper_differences(full, {**paper, "precision": "int8"}) == ["precision int8, the paper's is fp32"]
    assert paper_differences(full, {**paper, "mode": "training-free"}) == [
        "the training-free head, not a trained FPN (--fpn-checkpoint)"]
    assert paper_differences(full, {**paper, "levels": 2}) == [
        "an FPN fusing 2 level(s); Table 1's fuses 3 (Table 3 ablates fewer)"]
    assert paper_differences(EvaluationResult("unseen", [{}] * 539, {}, {}, {}, {}), paper) == [
        "539 of the split's 540 images (--limit or an incomplete dataset)"]
    assert tiny_grounder.config.precision == "auto" and tiny_grounder.image_path_precision == "fp32"


def test_limit_spreads_over_the_split():
    assert subset_indices(10, None) == list(range(10))
    assert subset_indices(10, 3) == [0, 4, 9]
    assert subset_indices(3, 50) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def recorded_predictions(monkeypatch) -> dict:
    """Every map the grounder returns, by image size and prompt, to rescore independently."""
    seen = {}
    original = AffordanceGrounder.heatmaps

    def recording(self, images, prompts):
        maps = original(self, images, prompts)
        for image, prompt, heatmap in zip(images, prompts, maps):
            seen[(image.tobytes(), prompt)] = heatmap.copy()
        return maps

    monkeypatch.setattr(AffordanceGrounder, "heatmaps", recording)
    return seen


def test_evaluate_command_end_to_end(agd20k, tmp_path, recorded_predictions):
    out = tmp_path / "eval"
    assert main(["evaluate", "--agd20k", str(agd20k), "--split", "seen", "--out", str(out), "--batch-size", "2",
                 "--num-workers", "2", *TINY_ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "seen" and results["images"] == 5 and not results["comparable_with_paper"]
    assert results["run"]["mode"] == "training-free" and results["run"]["levels"] is None
    # On a CPU the default image path is ONNX Runtime, in fp32 (not the int8 that precision auto picks).
    assert (results["run"]["backend"], results["run"]["precision"]) == ("onnxruntime", "fp32")
    assert "the training-free head, not a trained FPN (--fpn-checkpoint)" in results["differences_from_paper"]
    assert results["paper_table1"] == {"kld": 1.628, "sim": 0.335, "nss": 0.791}
    test_set = AGD20KTestSet(agd20k, "seen")
    assert [r["key"] for r in results["per_image"]] == [s.key for s in test_set.samples]
    for index, record in enumerate(results["per_image"]):
        image, gt = test_set.load(index)
        expected = score_map(recorded_predictions[(image.tobytes(), record["prompt"])], gt)
        for name in ("kld", "sim", "nss"):
            assert record[name] == pytest.approx(expected[name], abs=1e-9), (record["key"], name)
    # The split's figures are plain means over the images; the empty GT counts as 0/0/0.
    empty = next(r for r in results["per_image"] if r["key"] == "drink_with/cup/cup_000003.jpg")
    assert empty["degenerate"] == ["empty_gt"] and (empty["kld"], empty["sim"], empty["nss"]) == (0.0, 0.0, 0.0)
    assert results["degenerate"]["empty_gt"] == {"count": 1, "images": [empty["key"]]}
    metrics = results["metrics"]
    for name in ("kld", "sim", "nss"):
        assert metrics[name] == pytest.approx(np.mean([r[name] for r in results["per_image"]]), abs=1e-12)
    assert metrics["nss_nan"] == 0 and metrics["nss_reference"] == pytest.approx(metrics["nss"])
    hold = results["per_affordance"]["hold"]
    assert hold["n"] == 2 and hold["kld"] == pytest.approx(np.mean([r["kld"] for r in results["per_image"]
                                                                      if r["affordance"] == "hold"]))
    assert set(results["per_object"]) == {"cup", "knife"} and results["per_object"]["cup"]["n"] == 3
    report = (out / "report.md").read_text()
    assert "| AffordanceCLIP, paper Table 1 | 1.628 | 0.335 | 0.791 |" in report
    assert f"| {metrics['kld']:.3f} | {metrics['sim']:.3f} | {metrics['nss']:.3f} |" in report
    assert "| empty GT (all zero) | 1 |" in report and "qualitative.png" in report
    assert "Not comparable with the paper" in report and "1.917" in report  # Table 3 rows
    figure = cv2.imread(str(out / "qualitative.png"))
    assert figure is not None and figure.shape[:2] == (3 * 300, 900)  # image | GT | prediction, one row per affordance


def test_evaluate_levels_is_checked_against_the_checkpoint(agd20k, tmp_path, tiny_clip, caplog):
    checkpoint = tmp_path / "fpn1.safetensors"
    torch.manual_seed(0)
    fpn = AffordanceFPN(FPNConfig(in_channels=tiny_clip.feature_channels, embed_dim=tiny_clip.embed_dim, levels=1))
    save_fpn(checkpoint, fpn, "RN-tiny", 128)
    common = ["evaluate", "--agd20k", str(agd20k / "AGD20K" / "Seen"), "--split", "seen", *TINY_ARGS]
    assert main([*common, "--levels", "2", "--out", str(tmp_path / "none")]) == 2
    assert "no --fpn-checkpoint was given" in caplog.text
    assert main([*common, "--levels", "2", "--fpn-checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 2
    assert "fuses 1 level(s)" in caplog.text and not (tmp_path / "x").exists()
    out = tmp_path / "levels1"
    assert main([*common, "--levels", "1", "--fpn-checkpoint", str(checkpoint), "--out", str(out), "--limit", "2",
                 "--num-workers", "0", "--examples", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["levels"] == 1 and results["run"]["mode"] == "fpn" and results["images"] == 2
    assert results["differences_from_paper"] == [
        "2 of the split's 1675 images (--limit or an incomplete dataset)",
        "an FPN fusing 1 level(s); Table 1's fuses 3 (Table 3 ablates fewer)",
        "random CLIP weights (--clip-pretrained none): the numbers only test the pipeline",
        "clip_model RN-tiny, the paper's is RN101", "input_size 128, the paper's is 416"]
    assert [r["key"] for r in results["per_image"]] == ["cut_with/knife/knife_000000.jpg",
                                                        "hold/knife/knife_000005.jpg"]
    report = (out / "report.md").read_text()
    assert "| **this run, 1** |" in report and not (out / "qualitative.png").exists()


def test_evaluate_command_explains_a_wrong_root(tmp_path, caplog):
    assert main(["evaluate", "--agd20k", str(tmp_path), "--split", "unseen", *TINY_ARGS]) == 2
    assert "AGD20K/Unseen/testset" in caplog.text and "Cross-View-AG" in caplog.text


def test_evaluate_api_keeps_nan_nss_counted_in_the_json_and_report(agd20k, tmp_path):
    class Constant:
        """A grounder whose maps are constant: the reference's NSS is NaN for every image."""

        def heatmaps(self, images, prompts):
            return [np.full(image.shape[:2], 0.5, np.float32) for image in images]

    result = evaluate(Constant(), AGD20KTestSet(agd20k, "seen"), batch_size=3, num_workers=1, progress=False)
    summary = result.summary
    assert summary["n"] == 5 and summary["nss_nan"] == 5 and math.isnan(summary["nss"])
    assert math.isnan(summary["nss_reference"]) and summary["nss_nan_as_zero"] == 0.0
    assert result.degenerate["constant_pred"]["count"] == 5 and result.degenerate["empty_gt"]["count"] == 1
    run = {"mode": "fpn", "levels": 3, "clip_model": "RN101", "clip_pretrained": "openai", "device": "cpu"}
    saved = json.loads(write_json(result, run, tmp_path / "results.json").read_text())  # valid JSON: no NaN
    assert saved["metrics"]["nss"] is None and saved["metrics"]["nss_nan"] == 5
    assert all(r["nss"] is None and "constant_pred" in r["degenerate"] for r in saved["per_image"])
    report = markdown(result, run)
    assert "| constant prediction | 5 |" in report and "5 image(s) have a NaN NSS" in report
    assert "| **this run, 3** | 1.628 |" not in report and "| **this run, 3** |" in report


def test_evaluate_stops_on_a_broken_model_output(agd20k):
    class Broken:
        def heatmaps(self, images, prompts):
            return [np.full(image.shape[:2], np.nan, np.float32) for image in images]

    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate(Broken(), AGD20KTestSet(agd20k, "seen"), batch_size=2, num_workers=2, progress=False)
