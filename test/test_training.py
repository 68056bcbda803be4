"""Training (issue #4): data readers, loss, batch plan, one step on refer-format data, the model
learns, exact resume, checkpoints usable for inference. CPU, RN-tiny with random weights."""
from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file

from affordance_clip_ros.cli import main
from affordance_clip_ros.model import AffordanceGrounder, FrozenCLIP, GrounderConfig, load_fpn, read_metadata, save_fpn
from affordance_clip_ros.model.letterbox import Letterbox
from affordance_clip_ros.training import TrainConfig, build_dataset, load_jsonl, load_refer, train
from affordance_clip_ros.training.config import RESUME_OVERRIDABLE
from affordance_clip_ros.training.data import ReferringDataset, ResumableSampler, letterbox_mask
from affordance_clip_ros.training.records import Record
from affordance_clip_ros.training.loss import iou_counts, mask_to_logit_grid, pixel_text_loss
from affordance_clip_ros.training.distributed import DistContext
from affordance_clip_ros.training.train import (build_fpn, plan_batches, resume_config, training_dtype,
                                                warn_of_shared_images)

TINY_ARGS = ["--clip-model", "RN-tiny", "--clip-pretrained", "none", "--device", "cpu"]
TINY = dict(clip_model="RN-tiny", clip_pretrained="none", device="cpu", num_workers=0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on the shared two-core machines, two OpenMP threads competing with other
    processes for the cores ran the tiny CLIP about 40x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- a tiny real-format dataset
def write_tiny_refer(root, dataset="refcocog", split_by="umd") -> dict:
    """Two images and three referred objects, as the refer toolkit ships them: a Python-2-style
    pickle (protocol 2), COCO instances with a polygon, a compressed RLE and an uncompressed RLE."""
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True)
    (root / dataset).mkdir()
    rng = np.random.default_rng(0)
    sizes = {9: (120, 160), 25: (90, 70)}
    for image_id, (h, w) in sizes.items():
        cv2.imwrite(str(images_dir / f"COCO_train2014_{image_id:012d}.jpg"), rng.integers(0, 255, (h, w, 3), np.uint8))
    square = np.zeros((90, 70), np.uint8)
    square[10:40, 20:60] = 1
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode("ascii")
    crowd = np.zeros((120, 160), np.uint8)
    crowd[60:100, 100:150] = 1
    runs, flat, value, length = [], crowd.flatten(order="F"), 0, 0
    for pixel in flat:  # uncompressed RLE: run lengths starting with zeros, column-major
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    annotations = [
        {"id": 101, "image_id": 9, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 10, 70, 10, 70, 50, 10, 50]]},
        {"id": 102, "image_id": 25, "category_id": 1, "iscrowd": 0, "segmentation": compressed},
        {"id": 103, "image_id": 9, "category_id": 2, "iscrowd": 1,
         "segmentation": {"counts": runs, "size": [120, 160]}},
    ]
    for ann in annotations:
        ann["area"], ann["bbox"] = 1.0, [0, 0, 1, 1]
    instances = {"images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": h, "width": w}
                            for i, (h, w) in sizes.items()],
                 "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / dataset / "instances.json").write_text(json.dumps(instances))

    def ref(ref_id, ann_id, image_id, split, sentences):
        sents = [{"tokens": s.split(), "raw": s.capitalize(), "sent_id": ref_id * 10 + i, "sent": s}
                 for i, s in enumerate(sentences)]
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sentences": sents,
                "sent_ids": [s["sent_id"] for s in sents]}

    refs = [ref(0, 101, 9, "train", ["the grey box", "box at the top left"]),
            ref(1, 102, 25, "train", ["the small square"]),
            ref(2, 103, 9, "train", ["the crowd at the bottom right"]),
            ref(3, 101, 9, "val", ["the box"])]
    with open(root / dataset / f"refs({split_by}).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    poly = np.zeros((120, 160), np.uint8)
    poly[10:50, 10:70] = 1
    return {"the grey box": poly, "the small square": square, "the crowd at the bottom right": crowd}


def test_refer_reader_one_sample_per_sentence_and_masks_from_polygons_and_rle(tmp_path):
    expected = write_tiny_refer(tmp_path)
    records = load_refer(tmp_path, "refcocog", "umd", "train")
    assert [r.sentence for r in records] == ["the grey box", "box at the top left", "the small square",
                                             "the crowd at the bottom right"]
    for record in records:
        if record.sentence in expected:
            truth = expected[record.sentence]
            decoded = record.mask.decode(*truth.shape)
            assert decoded.dtype == np.uint8 and decoded.shape == truth.shape
            assert (decoded != truth).mean() < 0.02, record.sentence  # polygon edges rasterise by pycocotools' rule
    item = build_dataset("refcocog:umd", "train", 64, str(tmp_path))[0]
    assert item["pixels"].shape == (3, 64, 64) and item["mask"].shape == (64, 64) and item["text"] == "the grey box"
    assert item["box"].tolist() == [8, 0, 48, 64]  # 120x160 letterboxed into 64: 48 rows, centred
    with pytest.raises(ValueError, match=r"no split 'testB'.*\['train', 'val'\]"):
        load_refer(tmp_path, "refcocog", "umd", "testB")


def test_refer_images_are_read_as_stored_and_resized_copies_are_left_out(tmp_path, caplog):
    expected = write_tiny_refer(tmp_path)
    images = tmp_path / "images" / "mscoco" / "images" / "train2014"
    stored = cv2.cvtColor(cv2.imread(str(images / "COCO_train2014_000000000009.jpg")), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers (and OpenCV's IMREAD_COLOR) turn it to 160 rows x 120 columns
    Image.fromarray(stored).save(images / "COCO_train2014_000000000009.jpg", exif=exif.tobytes())
    dataset = build_dataset("refcocog:umd", "train", 64, str(tmp_path))
    item = dataset[0]
    assert item["text"] == "the grey box" and item["box"].tolist() == [8, 0, 48, 64]  # the annotated 120 x 160
    truth = letterbox_mask(expected["the grey box"], Letterbox(120, 160, 64))
    assert (item["mask"] != truth).float().mean() < 0.01

    cv2.imwrite(str(images / "COCO_train2014_000000000025.jpg"), np.zeros((70, 90, 3), np.uint8))  # 90 x 70 annotated
    records = load_refer(tmp_path, "refcocog", "umd", "train")
    assert [r.sentence for r in records] == ["the grey box", "box at the top left", "the crowd at the bottom right"]
    assert ("refcocog (umd) train: 1 image file(s) differ in size from instances.json, e.g. "
            "'" + str(images / "COCO_train2014_000000000025.jpg") + "' is 90x70 pixels but annotated at 70x90; their "
            "1 sentence(s) are left out") in caplog.text


def test_missing_refer_files_print_the_expected_layout(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match=r"(?s)refcoco\+ folder.*Expected layout.*refs\(unc\)\.p.*train2014"):
        load_refer(tmp_path, "refcoco+", "unc", "train")
    write_tiny_refer(tmp_path)
    (tmp_path / "images/mscoco/images/train2014/COCO_train2014_000000000025.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 image\(s\).*000000000025.*Expected layout"):
        load_refer(tmp_path, "refcocog", "umd", "train")
    assert main(["train", "--data-root", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "run"),
                 *TINY_ARGS]) == 2
    assert "Expected layout" in caplog.text and "instances.json" in caplog.text


def test_jsonl_reader_masks_polygons_and_line_numbered_errors(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((40, 50, 3), np.uint8))
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:30] = 255
    cv2.imwrite(str(tmp_path / "a_mask.png"), mask)
    lines = [{"image": "a.jpg", "mask": "a_mask.png", "sentences": ["the left thing", "grip here"]},
             {"image": "a.jpg", "polygon": [[20, 20], [40, 20], [40, 35], [20, 35]], "sentences": "the other one"}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = load_jsonl(tmp_path / "data.jsonl")
    assert [r.sentence for r in records] == ["the left thing", "grip here", "the other one"]
    assert np.array_equal(records[0].mask.decode(40, 50), (mask > 0).astype(np.uint8))
    polygon = records[2].mask.decode(40, 50)
    assert polygon[25, 30] == 1 and polygon[5, 5] == 0 and 250 <= polygon.sum() <= 340
    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps({"image": "a.jpg"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: needs 'image' and 'sentences'"):
        load_jsonl(tmp_path / "bad.jsonl")
    cv2.imwrite(str(tmp_path / "small_mask.png"), mask[:30])
    (tmp_path / "small.jsonl").write_text(json.dumps({**lines[0], "mask": "small_mask.png"}) + "\n")
    with pytest.raises(ValueError, match=r"small\.jsonl:1: mask '.*small_mask\.png' is 50x30 pixels but its image is"):
        load_jsonl(tmp_path / "small.jsonl")  # at start-up, not when a worker reaches the sample


# ----------------------------------------------------------------------------- config, plan, loss, order
def test_config_overrides_are_type_checked_and_unknown_keys_refused():
    config = TrainConfig()
    assert (config.batch_size, config.lr, config.epochs, config.input_size, config.clip_model) == (32, 1e-4, 1, 416,
                                                                                                   "RN101")
    assert config.replace(lr=1).lr == 1.0
    with pytest.raises(ValueError, match="unknown training option.*'learning_rate'.*valid options"):
        config.replace(learning_rate=1e-3)
    with pytest.raises(ValueError, match="'batch_size' must be int"):
        config.replace(batch_size="32")
    with pytest.raises(ValueError, match="BatchNorm"):
        TrainConfig(micro_batch_size=1)
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(input_size=100)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_batch_plan_accumulation_and_batchnorm_guard():
    plan = plan_batches(TrainConfig(), 1000, world_size=1)
    assert (plan.micro_batch, plan.accumulation, plan.steps_per_epoch, plan.total_steps) == (32, 1, 31, 31)
    plan = plan_batches(TrainConfig(micro_batch_size=4), 1000, world_size=2)  # 4 x 2 GPUs x 4 = 32
    assert (plan.accumulation, plan.steps_per_epoch, plan.samples_per_step) == (4, 62, 16)
    assert plan_batches(TrainConfig(max_steps=5, epochs=3), 1000, 1).total_steps == 5
    with pytest.raises(ValueError, match="BatchNorm needs >= 2"):
        plan_batches(TrainConfig(batch_size=4), 1000, world_size=4)
    with pytest.raises(ValueError, match="not a multiple"):
        plan_batches(TrainConfig(batch_size=10, micro_batch_size=4), 1000, 1)


def test_ddp_on_cuda_syncs_batchnorm_and_the_checkpoint_loads_into_a_plain_fpn(tmp_path):
    assert DistContext(0, 2, 0, torch.device("cuda", 0)).syncs_batchnorm
    assert not DistContext(0, 2, 0, torch.device("cpu")).syncs_batchnorm  # gloo: SyncBatchNorm needs CUDA
    assert not DistContext(0, 1, 0, torch.device("cuda", 0)).syncs_batchnorm
    clip = FrozenCLIP.create("RN-tiny", "none", "cpu")
    config = TrainConfig(**TINY, width=16)
    fpn = build_fpn(clip, config, torch.device("cpu"), sync_batchnorm=True)
    norms = [m for m in fpn.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    plain = build_fpn(clip, config, torch.device("cpu"), sync_batchnorm=False)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    for m in norms:  # statistics as training leaves them
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
    save_fpn(tmp_path / "fpn.safetensors", fpn, "RN-tiny", 64)
    loaded, _ = load_fpn(tmp_path / "fpn.safetensors", "RN-tiny", clip.feature_channels, clip.embed_dim)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in loaded.modules())
    for name, tensor in fpn.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_loss_is_mean_bce_on_the_logit_grid_and_iou_ignores_padding():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 16:32] = 1
    masks[1, 0:4, 0:4] = 1  # a quarter of one 8x8 cell: below half coverage, negative on the grid
    grid = mask_to_logit_grid(masks, (8, 8))
    assert grid[0].sum() == 4 * 2 and grid[1].sum() == 0
    logits = torch.randn(2, 8, 8)
    expected = -(grid * F.logsigmoid(logits) + (1 - grid) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(pixel_text_loss(logits, masks), expected)

    box = Letterbox(32, 64, 64)  # image rows 16..47, padding above and below
    full = torch.ones(32, 64, dtype=torch.uint8)
    lb = letterbox_mask(full.numpy(), box)
    assert lb[:16].sum() == 0 and lb[16:48].all() and lb[48:].sum() == 0
    boxes = torch.tensor([[16, 0, 32, 64]])
    everywhere = torch.full((1, 8, 8), 5.0)  # predicts padding too: ignored
    inter, union = iou_counts(everywhere, lb[None], boxes)
    assert inter.item() == union.item() == 32 * 64
    inter, union = iou_counts(torch.full((1, 8, 8), -0.01), lb[None], boxes)  # sigmoid < 0.5: nothing predicted
    assert inter.item() == 0 and union.item() == 32 * 64


def test_sampler_order_depends_on_seed_and_epoch_and_resumes_part_way():
    data = list(range(23))
    full = list(ResumableSampler(data, 1, 0, seed=3))
    assert sorted(full) == data and full == list(ResumableSampler(data, 1, 0, seed=3))
    sampler = ResumableSampler(data, 1, 0, seed=3)
    sampler.set_position(epoch=1, start=0)
    second = list(sampler)
    assert second != full
    sampler.set_position(epoch=1, start=10)
    assert list(sampler) == second[10:] and len(sampler) == 13
    shards = [list(ResumableSampler(data, 2, r, seed=3)) for r in (0, 1)]
    assert set(shards[0]) | set(shards[1]) == set(data) and len(shards[0]) == len(shards[1]) == 12


def test_per_object_epochs_draw_one_sentence_of_each_object_reproducibly():
    """sample_unit=object (CRIS): an epoch passes over objects, each with one of its sentences
    drawn anew per epoch; the draw depends only on (seed, epoch, object), also in workers."""
    sentences = {"a": ["the cup", "white mug", "cup on the left"], "b": ["the knife"], "c": ["red chair", "seat"]}
    records = [Record(f"/{ref}.jpg", text, None, ref) for ref, texts in sentences.items() for text in texts]
    objects = ReferringDataset(records, 64, per_object=True, seed=5)
    assert len(objects) == 3 and len(ReferringDataset(records, 64)) == 6

    def epoch_sentences(dataset, epoch):
        sampler = ResumableSampler(dataset, 1, 0, seed=5)
        sampler.set_position(epoch=epoch, start=0)
        return {dataset.record(i).referent: dataset.record(i).sentence for i in sampler}
    epochs = [epoch_sentences(objects, e) for e in range(20)]
    for drawn in epochs:
        assert set(drawn) == {"a", "b", "c"} and all(drawn[ref] in sentences[ref] for ref in drawn)
    assert {drawn["a"] for drawn in epochs} == set(sentences["a"])  # every sentence comes up over the epochs
    assert epochs == [epoch_sentences(ReferringDataset(records, 64, per_object=True, seed=5), e) for e in range(20)]
    other_seed = ReferringDataset(records, 64, per_object=True, seed=6)
    assert [epoch_sentences(other_seed, e) for e in range(20)] != epochs
    assert TrainConfig().sample_unit == "object"
    with pytest.raises(ValueError, match="sample_unit"):
        TrainConfig(sample_unit="image")
    with pytest.raises(ValueError, match="seed must be >= 0"):  # the per-epoch draw takes non-negative seeds
        TrainConfig(seed=-1)


def test_validation_images_that_are_also_training_images_are_counted_with_a_warning(caplog):
    train_set = ReferringDataset([Record("/coco/1.jpg", "cup", None), Record("/coco/2.jpg", "mug", None)], 64)
    val_set = ReferringDataset([Record("/elsewhere/2.jpg", "the mug", None), Record("/coco/3.jpg", "jug", None)], 64)
    assert warn_of_shared_images(train_set, val_set) == 1
    assert "1 of the 2 validation images are also training images" in caplog.text
    caplog.clear()
    assert warn_of_shared_images(train_set, ReferringDataset([Record("/coco/4.jpg", "jug", None)], 64)) == 0
    assert not caplog.text


# ----------------------------------------------------------------------------- end to end
def test_one_training_step_on_refer_data_gives_a_checkpoint_for_grounder_and_infer(tmp_path, caplog):
    write_tiny_refer(tmp_path / "refer")
    out = tmp_path / "run"
    args = ["train", "--data-root", str(tmp_path / "refer"), "--train-data", "refcocog:umd", "--val-data",
            "refcocog:umd", "--batch-size", "2", "--max-steps", "1", "--input-size", "64", "--num-workers", "1",
            "--levels", "2", "--width", "16", "--out-dir", str(out), *TINY_ARGS]
    assert main(args) == 0
    assert "BatchNorm statistics" not in caplog.text  # each forward pass sees the whole batch of 2
    [row] = rows(out / "train_log.csv")
    assert row["step"] == "1" and np.isfinite(float(row["loss"])) and float(row["images_per_s"]) > 0
    [val] = rows(out / "val_log.csv")
    assert val["samples"] == "1" and 0.0 <= float(val["mIoU"]) <= 1.0
    assert cv2.imread(str(out / "val_grid_step0000001.png")).shape == (224, 3 * 224, 3)
    state = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 1 and state["config"]["batch_size"] == 2 and "exp_avg" in state["optimizer"]["state"][0]
    meta = read_metadata(out / "fpn.safetensors")
    assert meta["input_size"] == 64 and meta["recipe"]["step"] == 1 and meta["recipe"]["train_data"] == "refcocog:umd"
    assert (meta["fpn"]["levels"], meta["fpn"]["width"]) == (2, 16)  # the Table 3 ablation options
    assert main(args) == 2, "an existing run is not overwritten without --resume"

    grounder = AffordanceGrounder.from_config(GrounderConfig(clip_model="RN-tiny", clip_pretrained="none",
                                                             device="cpu", input_size=64,
                                                             fpn_checkpoint=str(out / "fpn.safetensors")))
    [pred] = grounder.predict(np.zeros((50, 70, 3), np.uint8), ["the grey box"])
    assert grounder.mode == "fpn" and pred.heatmap.shape == (50, 70)
    image = tmp_path / "refer/images/mscoco/images/train2014/COCO_train2014_000000000009.jpg"
    assert main(["infer", str(image), "-p", "the grey box", "--out", str(tmp_path / "infer"), "--input-size", "64",
                 "--fpn-checkpoint", str(out / "fpn.safetensors"), *TINY_ARGS]) == 0
    record = json.loads((tmp_path / "infer" / "peaks.json").read_text())[0]
    assert record["mode"] == "fpn" and record["height"] == 120


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth-refcoco", str(root), "--num-images", "200", "--seed", "0"]) == 0
    return root


def test_synthetic_set_is_in_the_refer_layout(synthetic_root):
    refs = pickle.loads((synthetic_root / "refcoco" / "refs(unc).p").read_bytes())
    assert {r["split"] for r in refs} == {"train", "val", "test"}
    sentences = {s["sent"] for r in refs for s in r["sentences"]}
    assert "the red circle" in sentences or "the red square" in sentences
    assert any(s.endswith("on the left") for s in sentences) and any(s.endswith("on the right") for s in sentences)
    instances = json.loads((synthetic_root / "refcoco" / "instances.json").read_text())
    assert all(isinstance(a["segmentation"], list) for a in instances["annotations"])
    assert len(load_refer(synthetic_root, "refcoco", "unc", "val")) > 80


# Threshold: held-out mIoU >= 0.5 and >= 3x the untrained FPN. The untrained FPN scores about
# 0.07 (its random logits mark a blob or nothing). After 300 steps of 8 images at 160 px the FPN
# picks the referred shape among 2-3 and outlines it on its 20x20 logit grid: mIoU about 0.69
# (0.50 after 150 steps, 0.58 after 225), so 0.5 needs the right object nearly every time with a
# usable outline and still leaves room for numerical differences between machines.
LEARN_STEPS = 300


def test_the_fpn_learns_to_ground_phrases(synthetic_root, tmp_path):
    config = TrainConfig(**TINY, data_root=str(synthetic_root), train_data="refcoco:unc", val_data="refcoco:unc",
                         input_size=160, batch_size=8, lr=2e-3, max_steps=LEARN_STEPS, val_every=LEARN_STEPS,
                         log_every=50, save_every=10_000, out_dir=str(tmp_path / "run"))
    result = train(config)
    log = rows(tmp_path / "run" / "val_log.csv")
    untrained, trained = float(log[0]["mIoU"]), float(log[-1]["mIoU"])
    print(f"held-out mIoU untrained {untrained:.3f} -> trained {trained:.3f} after {LEARN_STEPS} steps "
          f"(oIoU {float(log[-1]['oIoU']):.3f}, {log[-1]['samples']} samples)")
    assert [r["step"] for r in log] == ["0", str(LEARN_STEPS)]
    assert result["val"]["mIoU"] == pytest.approx(trained, abs=1e-6)
    assert trained >= 0.5 and trained >= 3 * untrained
    losses = [float(r["loss"]) for r in rows(tmp_path / "run" / "train_log.csv")]
    assert losses[-1] < 0.6 * losses[0]


class Interrupted(Exception):
    pass


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, caplog):
    write_root = tmp_path / "data"
    assert main(["synth-refcoco", str(write_root), "--num-images", "12", "--seed", "1"]) == 0
    config = TrainConfig(**TINY, data_root=str(write_root), train_data="refcoco:unc", val_data="", input_size=64,
                         batch_size=8, micro_batch_size=4, max_steps=7, save_every=3, log_every=1, lr=1e-3, seed=5)
    whole = train(config.replace(out_dir=str(tmp_path / "whole")))
    assert "BatchNorm statistics come from micro-batches of 4 images, not from the whole batch of 8" in caplog.text
    plan = plan_batches(config, len(build_dataset("refcoco:unc", "train", 64, str(write_root))), 1)
    assert plan.steps_per_epoch < 7 and plan.accumulation == 2  # the run crosses an epoch and accumulates

    def stop_at_4(step, loss):
        if step == 4:  # the checkpoint of step 3 is on disk; step 4 is lost
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config.replace(out_dir=str(tmp_path / "cut")), step_callback=stop_at_4)
    with pytest.raises(ValueError, match=r"cannot change \['lr'\]"):
        resume_config(tmp_path / "cut", {"lr": 1.0})
    assert "device" in RESUME_OVERRIDABLE
    assert main(["train", "--resume", str(tmp_path / "cut"), "--num-workers", "0"]) == 0

    # Tolerance 0: on CPU with the same thread count the resumed run is bit-identical (same data
    # order, optimizer and BatchNorm state, and text embeddings that do not depend on a cache).
    a, b = load_file(whole["fpn"]), load_file(str(tmp_path / "cut" / "fpn.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    sa = torch.load(tmp_path / "whole" / "trainer_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "cut" / "trainer_state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 7
    torch.testing.assert_close(sb["optimizer"]["state"][0]["exp_avg"], sa["optimizer"]["state"][0]["exp_avg"],
                               rtol=0, atol=0)
    logged = rows(tmp_path / "cut" / "train_log.csv")
    assert [r["step"] for r in logged] == [str(s) for s in range(1, 8)]
    assert [r["loss"] for r in logged] == [r["loss"] for r in rows(tmp_path / "whole" / "train_log.csv")]


def test_resume_refuses_training_data_that_changed(tmp_path, caplog):
    for name, count in (("data", 8), ("other", 20)):
        assert main(["synth-refcoco", str(tmp_path / name), "--num-images", str(count)]) == 0
    config = TrainConfig(**TINY, data_root=str(tmp_path / "data"), train_data="refcoco:unc", val_data="",
                         input_size=64, batch_size=2, max_steps=1, out_dir=str(tmp_path / "run"))
    train(config)
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    samples = len(build_dataset("refcoco:unc", "train", 64, str(tmp_path / "data"), per_object=True))
    assert state["train_data"]["samples"] == samples
    assert main(["train", "--resume", str(tmp_path / "run"), "--data-root", str(tmp_path / "other"),
                 "--max-steps", "2"]) == 2
    assert "the training data differs from the checkpoint's" in caplog.text and f"{samples} (" in caplog.text
    assert torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)["step"] == 1
    same = [Record("/a/1.jpg", "the cup", None), Record("/a/2.jpg", "the mug", None)]
    elsewhere = [Record("/b/1.jpg", "the cup", None), Record("/b/2.jpg", "the mug", None)]
    reworded = [Record("/a/1.jpg", "the cup", None), Record("/a/2.jpg", "the jug", None)]
    fingerprint = ReferringDataset(same, 64).fingerprint()
    assert ReferringDataset(elsewhere, 64).fingerprint() == fingerprint != ReferringDataset(reworded, 64).fingerprint()
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)  # the same files in another folder continue the run
    assert main(["train", "--resume", str(tmp_path / "run"), "--data-root", str(moved), "--max-steps", "2"]) == 0
    assert torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)["step"] == 2


def test_fp16_autocast_keeps_its_gradient_scaler_across_resume(tmp_path):
    assert main(["synth-refcoco", str(tmp_path / "data"), "--num-images", "6"]) == 0
    config = TrainConfig(**TINY, data_root=str(tmp_path / "data"), train_data="refcoco:unc", val_data="",
                         input_size=64, batch_size=4, max_steps=2, precision="fp16", out_dir=str(tmp_path / "run"))
    train(config)
    first = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)["scaler"]
    assert first["scale"] > 0 and "_growth_tracker" in first
    train(resume_config(tmp_path / "run", {"max_steps": 3}), resume=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["precision"] == "fp16" and state["scaler"]["scale"] > 0


def test_torchrun_two_processes_train_and_only_rank_zero_writes(tmp_path):
    root = tmp_path / "data"
    assert main(["synth-refcoco", str(root), "--num-images", "10"]) == 0
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "affordance_clip_ros.cli", "train", "--data-root", str(root), "--train-data", "refcoco:unc",
               "--val-data", "refcoco:unc", "--batch-size", "8", "--micro-batch-size", "2", "--max-steps", "2",
               "--input-size", "64", "--num-workers", "0", "--log-every", "1", "--out-dir", str(out), *TINY_ARGS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in rows(out / "train_log.csv")] == ["1", "2"]
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 2
    [val] = rows(out / "val_log.csv")
    assert int(val["samples"]) == len(load_refer(root, "refcoco", "unc", "val"))  # shards add up, no duplicates


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_uses_bf16_only_on_gpus_with_native_bf16(capability, expected):
    """auto: bf16 (no loss scaling) from compute capability 8.0 on, fp16 with a loss scaler before
    (torch.cuda.is_bf16_supported() would also accept the slow emulated bf16 of a V100 or T4)."""
    with mock.patch("torch.cuda.get_device_capability", return_value=capability) as capability_of:
        assert training_dtype("auto", torch.device("cuda", 1)) is expected
    capability_of.assert_called_once_with(torch.device("cuda", 1))  # the training device, not GPU 0
    assert training_dtype("auto", torch.device("cpu")) is None
    assert training_dtype("fp16", torch.device("cpu")) is torch.float16
