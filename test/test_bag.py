"""`affordance-clip bag` end to end: bags written here with rosbags (mcap and sqlite3, raw and
compressed images, the Motorcycle RGB-D frame with depth and CameraInfo), run through the
command, and the output bag and video read back and checked.

Run through the ROS environment after `make build` (the rclpy cross-check needs it):
    bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_bag.py
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from affordance_clip_ros.bag import types as bag_types
from affordance_clip_ros.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--clip-model", "RN-tiny", "--clip-pretrained", "none", "--device", "cpu"]
PROMPTS = ["hold", "drink with"]
IMAGE_TOPIC, DEPTH_TOPIC, INFO_TOPIC = "/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info"
OUT = "/affordance_grounding"
START_NS = 1_764_400_000_000_000_000
PERIOD_NS = 200_000_000  # 5 Hz: neighbouring frames are further apart than max_depth_age (0.1 s)
MOTORCYCLE_AT = (5, 17)  # frame indices that carry the RGB-D frame (with depth and CameraInfo)
UNDECODABLE_AT = 11  # frame index with an encoding the model cannot take
NEVER = QosTime(sec=0, nsec=0)
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 5, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, NEVER, NEVER,
                 QosLiveliness.AUTOMATIC, NEVER, False)  # a camera driver's


def store_with_our_messages():
    """rosbags' typestore plus our messages, registered here straight from the repository's msg/."""
    store = get_typestore(Stores.LATEST)
    for path in sorted((REPO / "msg").glob("*.msg")):
        store.register(get_types_from_msg(path.read_text(), f"affordance_clip_ros/msg/{path.stem}"))
    return store


STORE = store_with_our_messages()
T = STORE.types


def stamp(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def header(ns: int, frame_id: str = "camera_color_optical_frame"):
    return T["std_msgs/msg/Header"](stamp=stamp(ns), frame_id=frame_id)


def raw_image(h, array: np.ndarray, encoding: str):
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return T["sensor_msgs/msg/Image"](header=h, height=array.shape[0], width=array.shape[1], encoding=encoding,
                                      is_bigendian=0, step=data.size // array.shape[0], data=data)


def compressed_image(h, rgb: np.ndarray, fmt: str = "jpeg"):
    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=h, format=f"rgb8; {fmt} compressed bgr8", data=data.reshape(-1))


def motorcycle():
    """The Middlebury Motorcycle frame: left image, float32 depth in metres (NaN = unknown) and
    its CameraInfo, from the node tests' support (rclpy message) turned into a rosbags one."""
    from support.fixtures import motorcycle_rgbd

    left, depth, info = motorcycle_rgbd()
    camera_info = T["sensor_msgs/msg/CameraInfo"](
        header=None, height=info.height, width=info.width, distortion_model=info.distortion_model,
        d=np.zeros(5), k=np.array(info.k, float), r=np.array(info.r, float), p=np.array(info.p, float), binning_x=0,
        binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                do_rectify=False))
    return left, depth, camera_info


def photos() -> list[tuple[np.ndarray, str]]:
    """scikit-image photos at half size, as a camera of each raw encoding would send them."""
    coffee, astronaut, chelsea, rocket = (np.ascontiguousarray(getattr(skimage.data, n)()[::2, ::2])
                                          for n in ("coffee", "astronaut", "chelsea", "rocket"))
    grey = np.ascontiguousarray(skimage.data.camera()[::2, ::2])
    return [(coffee, "rgb8"), (astronaut[..., ::-1], "bgr8"), (grey, "mono8"),
            (np.dstack([chelsea, np.full(chelsea.shape[:2], 255, np.uint8)]), "rgba8"), (rocket, "rgb8")]


@dataclass
class Recording:
    """What a test bag holds: per frame index, the stamp and the RGB the model should see."""

    path: Path
    stamps: list[int] = field(default_factory=list)
    rgb: dict[int, np.ndarray] = field(default_factory=dict)  # decodable frames only
    depth_m: np.ndarray | None = None  # the Motorcycle depth as the bag holds it, in metres
    counts: dict[str, int] = field(default_factory=dict)


def write_camera_bag(path: Path, storage: str, transport: str, depth_encoding: str, frames: int = 24,
                     zstd: bool = False) -> Recording:
    """A recording as a RealSense-like camera would leave it: colour at 5 Hz (raw or compressed),
    and for the Motorcycle frames an aligned depth image and CameraInfo, recorded after the colour
    image in one case and before it in the other."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=9, storage_plugin=plugin)
    if zstd:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    image_type = "sensor_msgs/msg/Image" if transport == "raw" else "sensor_msgs/msg/CompressedImage"
    image_conn = writer.add_connection(IMAGE_TOPIC + ("" if transport == "raw" else "/compressed"), image_type,
                                       typestore=STORE, offered_qos_profiles=[SENSOR_QOS])
    depth_conn = writer.add_connection(DEPTH_TOPIC, "sensor_msgs/msg/Image", typestore=STORE)
    info_conn = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=STORE)
    left, depth, info = motorcycle()
    if depth_encoding == "16UC1":
        depth_sent = np.where(np.isfinite(depth), np.round(depth * 1000), 0).astype(np.uint16)
        depth_m = np.where(depth_sent > 0, depth_sent / 1000.0, np.nan)
    else:
        depth_sent, depth_m = depth, depth
    recording = Recording(path, depth_m=depth_m)
    counts = {image_conn.topic: 0, DEPTH_TOPIC: 0, INFO_TOPIC: 0}
    pictures = photos()

    def write(conn, log_ns: int, msg) -> None:
        writer.write(conn, log_ns, STORE.serialize_cdr(msg, msg.__msgtype__))
        counts[conn.topic] += 1

    for i in range(frames):
        ns = START_NS + i * PERIOD_NS
        h = header(ns)
        recording.stamps.append(ns)
        if i in MOTORCYCLE_AT:
            rgb = left
            image = raw_image(h, left, "rgb8") if transport == "raw" else compressed_image(h, left, "png")
            info.header = h
            depth_first = i == MOTORCYCLE_AT[1]
            if depth_first:
                write(depth_conn, ns + 3_000_000, raw_image(h, depth_sent, depth_encoding))
            write(image_conn, ns + 5_000_000, image)
            write(info_conn, ns + 5_500_000, info)
            if not depth_first:
                write(depth_conn, ns + 9_000_000, raw_image(h, depth_sent, depth_encoding))
            recording.rgb[i] = rgb
            continue
        array, encoding = pictures[i % len(pictures)]
        if i == UNDECODABLE_AT:
            image = (raw_image(h, array[..., 0], "bayer_rggb8") if transport == "raw" else
                     T["sensor_msgs/msg/CompressedImage"](header=h, format="h264", data=np.arange(64, dtype=np.uint8)))
        elif transport == "raw":
            image = raw_image(h, array, encoding)
            recording.rgb[i] = {"bgr8": lambda a: a[..., ::-1], "mono8": lambda a: np.dstack([a] * 3),
                                "rgba8": lambda a: a[..., :3]}.get(encoding, lambda a: a)(array)
        else:
            rgb = array[..., ::-1] if encoding == "bgr8" else np.dstack([array] * 3) if encoding == "mono8" else \
                array[..., :3]
            image = compressed_image(h, np.ascontiguousarray(rgb))
            recording.rgb[i] = cv2.cvtColor(cv2.imdecode(image.data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        write(image_conn, ns + 5_000_000, image)
    writer.close()
    recording.counts = counts
    return recording


def offered_qos(path: Path) -> dict[str, list[Qos]]:
    with Reader(path) as reader:
        return {c.topic: c.ext.offered_qos_profiles for c in reader.connections}


def read_bag(path: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    """Every message of a bag: topic -> [(log time, deserialized message, raw bytes)] in order."""
    with Reader(path) as reader:
        out: dict[str, list] = {c.topic: [] for c in reader.connections}
        for connection, log_ns, raw in reader.messages():
            out[connection.topic].append((log_ns, STORE.deserialize_cdr(raw, connection.msgtype), bytes(raw)))
    return out


def ns_of(h) -> int:
    return h.stamp.sec * 10**9 + h.stamp.nanosec


@pytest.mark.parametrize("storage, transport, depth_encoding, backend", [
    ("mcap", "raw", "32FC1", "auto"),  # auto: ONNX Runtime on the CPU, batched
    ("sqlite3", "compressed", "16UC1", "torch"),
])
def test_every_frame_is_grounded_and_written_with_its_stamp_header_prompts_and_3d_points(
        tmp_path, caplog, storage, transport, depth_encoding, backend):
    from support.fixtures import motorcycle_point

    rec = write_camera_bag(tmp_path / "recording", storage, transport, depth_encoding)
    image_topic = IMAGE_TOPIC + ("" if transport == "raw" else "/compressed")
    out, video = tmp_path / "out", tmp_path / "overlay.mp4"
    caplog.set_level(logging.INFO, logger="affordance_clip_ros")
    assert main(["bag", str(rec.path), "--image-topic", image_topic, "--depth-topic", DEPTH_TOPIC,
                 "--camera-info-topic", INFO_TOPIC, *[arg for p in PROMPTS for arg in ("-p", p)], "--out", str(out),
                 "--video", str(video), "--storage", storage, "--batch-size", "4", "--backend", backend,
                 "--peak-threshold", "0", *TINY_ARGS]) == 0  # random weights score low: peaks anyway
    assert (out / "metadata.yaml").is_file()
    assert next(out.glob("*.mcap" if storage == "mcap" else "*.db3"))
    bag = read_bag(out)

    # The input topics, copied as recorded, with the QoS they were offered with.
    original = read_bag(rec.path)
    for topic, messages in original.items():
        assert [(t, raw) for t, _, raw in bag[topic]] == [(t, raw) for t, _, raw in messages], topic
    assert offered_qos(out)[image_topic] == [SENSOR_QOS]

    # One result per decodable frame, at its stamp, with its header and the prompts in order.
    decodable = sorted(rec.rgb)
    assert UNDECODABLE_AT not in decodable and len(decodable) == len(rec.stamps) - 1
    results = bag[f"{OUT}/result"]
    assert [t for t, _, _ in results] == [rec.stamps[i] for i in decodable]
    for (log_ns, result, _), i in zip(results, decodable):
        assert ns_of(result.header) == log_ns and result.header.frame_id == "camera_color_optical_frame"
        assert [m.prompt for m in result.maps] == PROMPTS and result.inference_ms > 0
        height, width = rec.rgb[i].shape[:2]
        for m in result.maps:
            heatmap = m.heatmap.data.view(np.float32).reshape(height, width)
            assert m.heatmap.encoding == "32FC1" and ns_of(m.heatmap.header) == log_ns
            assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
            assert m.peaks, "with --peak-threshold 0 every map has its maximum as a peak"
            scores = [p.score for p in m.peaks]
            assert scores == sorted(scores, reverse=True)
            for p in m.peaks:
                assert 0 <= p.u < width and 0 <= p.v < height
                assert abs(heatmap[int(p.v), int(p.u)] - p.score) < 1e-5
    # ~/heatmap is the first prompt's map; ~/overlay the image with it blended, in bgr8.
    heatmaps, overlays = bag[f"{OUT}/heatmap"], bag[f"{OUT}/overlay"]
    assert len(heatmaps) == len(overlays) == len(results)
    for (_, result, _), (_, heatmap, _), (_, overlay, _), i in zip(results, heatmaps, overlays, decodable):
        assert bytes(heatmap.data) == bytes(result.maps[0].heatmap.data)
        assert overlay.encoding == "bgr8" and (overlay.height, overlay.width) == rec.rgb[i].shape[:2]
        assert ns_of(overlay.header) == ns_of(result.header)

    # 3D points: the Motorcycle frames, paired with their own depth whichever came first.
    contact = bag[f"{OUT}/contact_point"]
    assert [t for t, _, _ in contact] == [rec.stamps[i] for i in MOTORCYCLE_AT]
    for (_, result, _), i in zip(results, decodable):
        with_points = [p for m in result.maps for p in m.peaks if p.has_point]
        if i not in MOTORCYCLE_AT:
            assert not with_points
            continue
        assert with_points
        for m in result.maps:
            for p in m.peaks:
                want = motorcycle_point(rec.depth_m, p.u, p.v)
                assert p.has_point == (want is not None)
                if want is not None:
                    np.testing.assert_allclose((p.point.x, p.point.y, p.point.z), want, rtol=1e-5, atol=1e-6)
        best = next(p for p in result.maps[0].peaks if p.has_point)
        [(_, point, _)] = [c for c in contact if c[0] == ns_of(result.header)]
        assert (point.point.x, point.point.y, point.point.z) == (best.point.x, best.point.y, best.point.z)
        assert point.header.frame_id == result.header.frame_id

    # The video: one frame per result, at the recording's 5 frames/s.
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0, abs=0.01)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(results)
    capture.release()

    # The summary.
    log = caplog.text
    assert f"frames: {len(results)} processed, 1 skipped" in log
    assert ("bayer_rggb8" if transport == "raw" else "format 'h264'") in log
    for prompt in PROMPTS:
        assert f"peak found for '{prompt}': {len(results)} of {len(results)} frames" in log
    others = len(results) - len(MOTORCYCLE_AT)
    assert f"3D contact points: {len(MOTORCYCLE_AT)} frames, none for {others}" in log
    assert f"without 3D ({others} frames): no depth image within max_depth_age=0.1 s of the image stamp" in log
    assert "model: " in log and "frames/s" in log


def test_a_result_in_the_output_bag_is_the_node_s_message_for_rclpy(tmp_path):
    """What a ROS 2 program replaying the bag gets: rclpy deserializes our AffordanceResult."""
    serialization = pytest.importorskip("rclpy.serialization", reason="needs the ROS 2 environment")
    from affordance_clip_ros.msg import AffordanceResult

    rec = write_camera_bag(tmp_path / "recording", "mcap", "raw", "32FC1", frames=7)
    assert main(["bag", str(rec.path), "--image-topic", IMAGE_TOPIC, "--depth-topic", DEPTH_TOPIC,
                 "--camera-info-topic", INFO_TOPIC, "-p", "hold", "--out", str(tmp_path / "out"), "--backend", "torch",
                 *TINY_ARGS]) == 0
    [(_, ours, raw)] = [r for r in read_bag(tmp_path / "out")[f"{OUT}/result"] if ns_of(r[1].header) ==
                        rec.stamps[MOTORCYCLE_AT[0]]]
    theirs = serialization.deserialize_message(raw, AffordanceResult)
    assert theirs.header.frame_id == ours.header.frame_id and theirs.header.stamp.sec == ours.header.stamp.sec
    assert [p.u for p in theirs.maps[0].peaks] == [p.u for p in ours.maps[0].peaks]
    assert [p.point.z for p in theirs.maps[0].peaks] == pytest.approx([p.point.z for p in ours.maps[0].peaks])
    assert bytes(theirs.maps[0].heatmap.data) == bytes(ours.maps[0].heatmap.data)


def test_a_missing_topic_lists_the_topics_the_bag_has(tmp_path, caplog):
    rec = write_camera_bag(tmp_path / "recording", "mcap", "raw", "32FC1", frames=6)
    assert main(["bag", str(rec.path), "--image-topic", "/camera/image", "-p", "hold", "--out",
                 str(tmp_path / "out"), *TINY_ARGS]) == 2
    assert "--image-topic /camera/image is not in the bag" in caplog.text
    for topic in (IMAGE_TOPIC, DEPTH_TOPIC, INFO_TOPIC):
        assert topic in caplog.text
    assert "sensor_msgs/msg/CameraInfo  (1 message)" in caplog.text
    assert not (tmp_path / "out").exists()
    assert main(["bag", str(rec.path), "--image-topic", INFO_TOPIC, "-p", "hold", "--out", str(tmp_path / "out"),
                 *TINY_ARGS]) == 2
    assert "holds sensor_msgs/msg/CameraInfo; it must be sensor_msgs/msg/Image or" in caplog.text


# A ROS-free interpreter: the command must run where no ROS 2 is installed.
WITHOUT_ROS = """
import importlib.abc, sys
ROS = ("rclpy", "rosidl", "rcl_", "sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces",
       "visualization_msgs", "diagnostic_msgs", "ament_index_python", "affordance_clip_ros.msg", "image_geometry")
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(ROS):
            raise ImportError(f"{name}: no ROS in this interpreter")
sys.meta_path.insert(0, NoRos())
from affordance_clip_ros.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_ros(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WITHOUT_ROS, "bag", *args, *TINY_ARGS, "--backend", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def cut_short(recording: Path, fraction: float) -> Path:
    """A killed recording: no metadata.yaml, the storage file ends part-way through."""
    (recording / "metadata.yaml").unlink()
    [storage_file] = [p for p in recording.iterdir() if p.suffix in (".mcap", ".db3")]
    os.truncate(storage_file, int(storage_file.stat().st_size * fraction))
    return storage_file


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_killed_recording_is_processed_up_to_where_it_can_be_read_without_ros(tmp_path, storage):
    rec = write_camera_bag(tmp_path / "recording", storage, "raw", "32FC1", frames=24, zstd=storage == "mcap")
    storage_file = cut_short(rec.path, 0.6)
    out = tmp_path / "out"
    proc = run_without_ros([str(rec.path), "--image-topic", IMAGE_TOPIC, "--depth-topic", DEPTH_TOPIC,
                            "--camera-info-topic", INFO_TOPIC, "-p", "hold", "--out", str(out), "--storage", storage])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "no metadata.yaml" in err
    assert f"the bag is damaged, read up to: {storage_file.name}: stopped after" in err
    bag = read_bag(out)
    images, results = bag[IMAGE_TOPIC], bag[f"{OUT}/result"]
    assert 6 <= len(images) < 24, "about 60 % of the recording is readable"
    decodable = [t for t, msg, _ in images if msg.encoding != "bayer_rggb8"]
    assert [t for t, _, _ in results] == [t - 5_000_000 for t in decodable]  # every frame read has its result
    assert f"frames: {len(results)} processed" in err


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_leaves_a_complete_readable_bag_with_the_frames_done(tmp_path, signum, status):
    """Ctrl-C, or SIGTERM as launch, systemd or timeout send it."""
    rec = write_camera_bag(tmp_path / "recording", "sqlite3", "raw", "32FC1", frames=60)
    out = tmp_path / "out"
    proc = run_without_ros([str(rec.path), "--image-topic", IMAGE_TOPIC, "-p", "hold", "--out", str(out),
                            "--storage", "sqlite3", "--batch-size", "2"])
    err: list[str] = []
    progressed = threading.Event()

    def watch() -> None:  # tqdm's progress, "... 3/60 [...": interrupt once a few frames are done
        line = ""
        while char := proc.stderr.read(1):
            err.append(char)
            line = "" if char in "\r\n" else line + char
            if "/60 [" in line and int(line.split("/60 [")[0].split()[-1]) >= 3:
                progressed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert progressed.wait(240), "".join(err)
    proc.send_signal(signum)
    assert proc.wait(120) == status, "".join(err)
    reader.join(10)
    text = "".join(err)
    assert "interrupted: the output bag holds the frames read so far, each with its result" in text
    bag = read_bag(out)  # metadata.yaml and the database are complete
    results = bag[f"{OUT}/result"]
    assert 3 <= len(results) < 59
    decodable = [t for t, msg, _ in bag[IMAGE_TOPIC] if msg.encoding != "bayer_rggb8"]
    assert [t for t, _, _ in results] == [t - 5_000_000 for t in decodable]  # a result for every frame read
    assert f"frames: {len(results)} processed" in text


def test_the_message_definitions_are_found_in_the_install_and_in_a_checkout(tmp_path):
    folder = bag_types.message_folder()
    assert (folder / "AffordanceResult.msg").is_file()
    if "install" in Path(bag_types.__file__).parts:  # the colcon install: its own share/ copy
        assert folder.parts[-3:] == ("share", "affordance_clip_ros", "msg") and "install" in folder.parts
    store = bag_types.typestore(REPO / "msg")
    assert "affordance_clip_ros/msg/AffordanceResult" in store.types
    with pytest.raises(FileNotFoundError, match="message definitions"):
        bag_types.typestore(tmp_path)
