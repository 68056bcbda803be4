"""`affordance-clip export --onnx`: the image path as ONNX, checked against PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from affordance_clip_ros.cli import main
from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig

TINY_ARGS = ["--clip-model", "RN-tiny", "--clip-pretrained", "none"]


def test_export_training_free_matches_torch_at_several_sizes(tmp_path, capsys):
    out = tmp_path / "onnx" / "tiny.onnx"
    assert main(["export", "--onnx", str(out), "--input-size", "128", *TINY_ARGS]) == 0
    printed = capsys.readouterr().out
    assert printed.count("OK") == 3 and "FAIL" not in printed and "tolerance" in printed
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["mode"] == "training-free" and meta["output_stride"] == "32" and meta["dynamic_hw"] == "true"

    # The command compared values with torch; here, independently: any multiple of 32 and any
    # batch run, and the training-free head gives unit-norm features.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 128, 128), (2, 3, 96, 224)]:
        [emb] = session.run(None, {"pixels": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)})
        assert emb.shape == (shape[0], 64, shape[2] // 32, shape[3] // 32)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)  # unit-norm dense CLIP features


def test_export_with_fpn_checkpoint_matches_torch_and_a_failed_check_exits_non_zero(tmp_path, capsys):
    from affordance_clip_ros.model import AffordanceFPN, FPNConfig, FrozenCLIP, save_fpn

    clip = FrozenCLIP.create("RN-tiny", "none", "cpu")
    checkpoint = tmp_path / "fpn.safetensors"
    save_fpn(checkpoint, AffordanceFPN(FPNConfig(clip.feature_channels, clip.embed_dim, width=16, levels=2)),
             clip_model="RN-tiny", input_size=128)
    out = tmp_path / "fpn.onnx"
    args = ["export", "--onnx", str(out), "--input-size", "128", "--static", "--fpn-checkpoint", str(checkpoint),
            *TINY_ARGS]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("OK") == 2 and "fpn mode" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == [1, 3, 128, 128]
    assert main(args + ["--tolerance", "-1"]) == 1, "a failed comparison must fail the command"
    assert "FAIL" in capsys.readouterr().out


def test_exported_graph_equals_the_grounder_torch_path(tmp_path):
    from affordance_clip_ros.model.onnx_backend import ImagePath, OrtImagePath, export_onnx

    grounder = AffordanceGrounder.from_config(GrounderConfig(clip_model="RN-tiny", clip_pretrained="none",
                                                             device="cpu", backend="torch"))
    export_onnx(ImagePath(grounder.clip, grounder.fpn), tmp_path / "g.onnx", input_size=160)
    session = OrtImagePath(tmp_path / "g.onnx")
    for shape in [(1, 3, 416, 416), (1, 3, 224, 352)]:
        pixels = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(session(pixels), grounder.torch_pixel_embeddings(pixels), rtol=1e-3, atol=1e-4)
