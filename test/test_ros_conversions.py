"""sensor_msgs/Image <-> numpy (affordance_clip_ros.ros.conversions): exact, strict, fuzzed.

Run through the ROS environment after `make build`:
    bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_conversions.py
"""
from __future__ import annotations

import struct
import sys
import zlib

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("sensor_msgs.msg", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from affordance_clip_ros.ros.conversions import (ENCODINGS, ImageConversionError, image_to_numpy,
                                                 numpy_to_image, rgb_from_compressed, rgb_from_image,
                                                 rgb_from_message)

RNG = np.random.default_rng(7)
HOST_BIG = sys.byteorder == "big"


def raw_image(array: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0) -> Image:
    """An Image message written by hand (not by the code under test): rows of ``array`` in the
    given byte order, each followed by ``pad`` junk bytes."""
    height, width = array.shape[:2]
    wire = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    junk = np.full((height, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return Image(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
                 step=rows.shape[1] + pad, data=data)


def random_array(encoding: str, height: int, width: int) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return RNG.normal(size=shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_every_encoding_exact_with_step_and_byte_order(encoding, big_endian, pad):
    array = random_array(encoding, 5, 7)
    got = image_to_numpy(raw_image(array, encoding, big_endian, pad))
    assert got.dtype == array.dtype and got.dtype.isnative
    assert got.shape == array.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, array)


def test_result_does_not_alias_the_message():
    msg = raw_image(random_array("rgb8", 4, 4), "rgb8")
    got = image_to_numpy(msg)
    got[:] = 0
    assert any(bytes(msg.data))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
def test_rgb_from_colour_encodings(encoding):
    rgb = RNG.integers(0, 255, size=(6, 9, 3), endpoint=True, dtype=np.uint8)
    rgb[0, 0] = 255  # full range: mono16's brightest pixel maps to 255
    source = {"rgb8": rgb, "bgr8": rgb[..., ::-1],
              "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
              "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
              "mono8": rgb[..., 0], "mono16": rgb[..., 0].astype(np.uint16) * 257}[encoding]
    expected = rgb if encoding not in ("mono8", "mono16") else np.repeat(rgb[..., :1], 3, axis=2)
    got = rgb_from_image(raw_image(np.ascontiguousarray(source), encoding, big_endian=True, pad=1))
    assert got.dtype == np.uint8 and got.shape == (6, 9, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_mono16_of_any_bit_depth_uses_the_whole_8_bit_range(bits):
    """A 10- or 12-bit infrared image must not come out almost black (its top 8 of 16 bits are ~0)."""
    grey = RNG.integers(0, 2**bits - 1, size=(8, 8), endpoint=True, dtype=np.uint16)
    grey[0, 0] = 2**bits - 1
    got = rgb_from_image(raw_image(grey, "mono16", big_endian=False, pad=0))
    np.testing.assert_array_equal(got[..., 0], np.round(grey * (255 / (2**bits - 1))).astype(np.uint8))
    assert got[0, 0, 0] == 255


def test_mono16_dark_frame_is_not_stretched():
    grey = np.full((4, 4), 40, dtype=np.uint16)
    assert (rgb_from_image(raw_image(grey, "mono16", big_endian=False, pad=0)) == 40).all()


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "yuv422", "8UC3", "bayer_rggb8", ""])
def test_rgb_refuses_non_colour_encodings(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(ImageConversionError, match="colour|encoding"):
        rgb_from_image(msg)


@pytest.mark.parametrize("encoding", ["yuv422", "8UC3", "rgb16", "RGB8", "jpeg"])
def test_unsupported_encodings_named_in_error(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=6, data=bytes(12))
    with pytest.raises(ImageConversionError, match="unsupported encoding") as info:
        image_to_numpy(msg)
    assert encoding in str(info.value) and "rgb8" in str(info.value)


@pytest.mark.parametrize("change, match", [
    (dict(data=bytes(4 * 3 * 5 - 1)), "data holds"),     # one byte short
    (dict(data=bytes(4 * 3 * 5 + 1)), "data holds"),     # one byte too many
    (dict(data=bytes(0)), "data holds"),
    (dict(step=11, data=bytes(11 * 5)), "step 11 is smaller"),  # step < width * channels
    (dict(step=0, data=b""), "step 0 is smaller"),
])
def test_inconsistent_layouts_are_refused(change, match):
    msg = Image(height=5, width=4, encoding="rgb8", step=12, data=bytes(60))
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageConversionError, match=match):
        image_to_numpy(msg)


@pytest.mark.parametrize("height, width", [(0, 5), (5, 0), (0, 0)])
def test_zero_size_gives_an_empty_array(height, width):
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=b"")
    assert image_to_numpy(msg).shape == (height, width, 3)


def test_round_trip_and_header():
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    for encoding in ENCODINGS:
        array = random_array(encoding, 3, 5)
        msg = numpy_to_image(array, encoding, header)
        assert msg.header == header and msg.is_bigendian == int(HOST_BIG)
        assert msg.step == 5 * array.itemsize * (1 if array.ndim == 2 else array.shape[2])
        np.testing.assert_array_equal(image_to_numpy(msg), array)


@pytest.mark.parametrize("array, encoding", [
    (np.zeros((2, 2), np.float64), "32FC1"), (np.zeros((2, 2, 3), np.uint8), "mono8"),
    (np.zeros((2, 2, 4), np.uint8), "bgr8"), (np.zeros((2, 2), np.uint8), "yuv422")])
def test_numpy_to_image_refuses_mismatches(array, encoding):
    with pytest.raises(ImageConversionError):
        numpy_to_image(array, encoding)


# --- fuzzing: any message either converts exactly or raises a clean ValueError ---------------

def reference_decode(msg: Image) -> np.ndarray:
    """Slow, independent decoding: row by row, byte by byte."""
    dtype, channels = ENCODINGS[msg.encoding]
    dtype = dtype.newbyteorder(">" if msg.is_bigendian and dtype.itemsize > 1 else "<")
    row_bytes = msg.width * channels * dtype.itemsize
    data = bytes(msg.data)
    rows = [np.frombuffer(data[r * msg.step:r * msg.step + row_bytes], dtype=dtype) for r in range(msg.height)]
    flat = np.array(rows, dtype=dtype).reshape(msg.height, msg.width * channels)
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return flat.reshape(shape).astype(dtype.newbyteorder("="))


ENCODING_NAMES = list(ENCODINGS) + ["yuv422", "8UC3", "32FC3", "bgr16", "", "mono 8"]


@st.composite
def image_messages(draw):
    encoding = draw(st.sampled_from(ENCODING_NAMES))
    itemsize, channels = ENCODINGS.get(encoding, (np.dtype(np.uint8), 3))
    itemsize = np.dtype(itemsize).itemsize
    height = draw(st.integers(0, 9))
    width = draw(st.integers(0, 9))
    step = max(0, width * channels * itemsize + draw(st.integers(-4, 6)))
    length = max(0, step * height + draw(st.sampled_from([0, 0, 0, -1, 1, -step, 7])))
    data = draw(st.binary(min_size=length, max_size=length))
    return Image(height=height, width=width, encoding=encoding, step=step,
                 is_bigendian=draw(st.integers(0, 1)), data=data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_messages())
def test_fuzz_image_to_numpy(msg):
    try:
        got = image_to_numpy(msg)
    except ValueError as e:
        assert isinstance(e, ImageConversionError) and str(e)
        return
    expected = reference_decode(msg)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))  # NaN bit patterns too
    else:
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=200, deadline=None)
@given(image_messages())
def test_fuzz_rgb_from_image(msg):
    try:
        got = rgb_from_image(msg)
    except ValueError as e:
        assert isinstance(e, ImageConversionError)
        return
    assert got.dtype == np.uint8 and got.shape == (msg.height, msg.width, 3)


# --- CompressedImage (image_transport's compressed plugin) ----------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def test_compressed_jpeg_and_png_decode_to_rgb():
    rgb = skimage.data.astronaut()[::4, ::4].copy()
    png = CompressedImage(format="rgb8; png compressed bgr8", data=cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    np.testing.assert_array_equal(rgb_from_compressed(png, 10**6), rgb)  # lossless
    jpeg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                           .tobytes())
    got = rgb_from_message(jpeg, 10**6)
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).mean() < 4  # colour order kept
    grey = CompressedImage(format="mono8; jpeg compressed mono8", data=cv2.imencode(".jpg", rgb[..., 0])[1].tobytes())
    assert rgb_from_compressed(grey, 10**6).shape == rgb.shape
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])
    with_alpha = CompressedImage(format="bgra8; png compressed bgra8", data=cv2.imencode(".png", bgra)[1].tobytes())
    np.testing.assert_array_equal(rgb_from_compressed(with_alpha, 10**6), rgb)


def test_compressed_16_bit_png_is_scaled_like_raw_mono16():
    """image_transport's png plugin keeps mono16 as a 16-bit PNG: a 12-bit infrared frame must not
    come out almost black."""
    grey = RNG.integers(0, 4095, size=(8, 8), endpoint=True, dtype=np.uint16)
    grey[0, 0] = 4095
    msg = CompressedImage(format="mono16; png compressed mono16", data=cv2.imencode(".png", grey)[1].tobytes())
    got = rgb_from_compressed(msg, 10**6)
    np.testing.assert_array_equal(got, rgb_from_image(raw_image(grey, "mono16")))
    assert got.max() == 255


@pytest.mark.parametrize("name, msg, match", [
    ("over_limit", CompressedImage(format="png", data=png_header_only(9000, 9000)), "9000x9000 is larger than"),
    ("bomb", CompressedImage(format="png", data=png_header_only(100_000, 100_000)), "decompression bomb"),
    ("garbage", CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"), "cannot be read"),
    ("empty", CompressedImage(format="jpeg", data=b""), "cannot be read"),
    ("truncated", CompressedImage(format="png", data=png_header_only(64, 48)), "cannot be decoded"),
    ("depth", CompressedImage(format="16UC1; compressedDepth png", data=b""), "compressed depth"),
])
def test_bad_compressed_images_are_refused_before_decoding(name, msg, match):
    with pytest.raises(ImageConversionError, match=match):
        rgb_from_compressed(msg, 8192 * 8192)


def test_raw_images_over_the_pixel_limit_are_refused_before_any_copy():
    msg = Image(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=bytes(12))
    with pytest.raises(ImageConversionError, match="larger than"):
        rgb_from_message(msg, 8192 * 8192)
