"""sensor_msgs/Image <-> numpy, exact and strict. No rclpy node here, and no ROS import: the
functions read any message with the sensor_msgs fields, rclpy's or a rosbags typestore's (the bag
command runs without ROS); only :func:`numpy_to_image` builds an rclpy message.

``image_to_numpy`` validates the message's own description of its buffer (encoding, width,
height, step, data length) before looking at a single pixel, so a malformed message gives a
clean :class:`ImageConversionError` (a ``ValueError``) naming what is wrong, never a garbage
array or a crash. Row padding (``step`` > width * pixel size) is dropped and multi-byte pixels
are read in the byte order ``is_bigendian`` says. numpy does the conversion on every install
(cv_bridge is not used: it shears rgb8 rows whose step is not a multiple of 3 bytes and fails on
big-endian 16-bit images with numpy 2).

Encodings (sensor_msgs/image_encodings.hpp names):

=========  =======  ========  =====================================
encoding   dtype    channels  use here
=========  =======  ========  =====================================
rgb8       uint8    3         colour image
bgr8       uint8    3         colour image, overlay output
rgba8      uint8    4         colour image (alpha dropped)
bgra8      uint8    4         colour image (alpha dropped)
mono8      uint8    1         grey image (replicated to RGB)
mono16     uint16   1         grey image (brightest pixel -> 255)
16UC1      uint16   1         depth, millimetres
32FC1      float32  1         depth in metres, heatmap output
=========  =======  ========  =====================================
"""
from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np
from PIL import Image as PILImage

if TYPE_CHECKING:
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header


class ImageConversionError(ValueError):
    """An Image message that does not describe a valid buffer, or an unsupported encoding."""


class Encoding(NamedTuple):
    dtype: np.dtype
    channels: int


ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(np.dtype(np.uint8), 3),
    "bgr8": Encoding(np.dtype(np.uint8), 3),
    "rgba8": Encoding(np.dtype(np.uint8), 4),
    "bgra8": Encoding(np.dtype(np.uint8), 4),
    "mono8": Encoding(np.dtype(np.uint8), 1),
    "mono16": Encoding(np.dtype(np.uint16), 1),
    "16UC1": Encoding(np.dtype(np.uint16), 1),
    "32FC1": Encoding(np.dtype(np.float32), 1),
}
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "32FC1")
_HOST_BIG_ENDIAN = sys.byteorder == "big"


def _encoding(name: str) -> Encoding:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ImageConversionError(
            f"unsupported encoding '{name}'; supported: {', '.join(ENCODINGS)}") from None


def check_layout(msg: Image) -> Encoding:
    """Validate encoding, size, step and data length; return the encoding's dtype and channels."""
    enc = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * enc.channels * enc.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width {width} x {enc.channels} channel(s) x "
            f"{enc.dtype.itemsize} byte(s) = {row_bytes} for encoding '{msg.encoding}'")
    size = len(msg.data)
    if size != step * height:
        raise ImageConversionError(
            f"data holds {size} bytes but step x height = {step} x {height} = {step * height}")
    return enc


def image_to_numpy(msg: Image) -> np.ndarray:
    """An Image message -> a C-contiguous, native-byte-order array: (H, W) for one channel,
    (H, W, C) otherwise, with the encoding's dtype. A zero width or height gives an empty array.

    Raises :class:`ImageConversionError` for an unsupported encoding or an inconsistent layout.
    """
    enc = check_layout(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    shape = (height, width) if enc.channels == 1 else (height, width, enc.channels)
    if height == 0 or width == 0:
        return np.zeros(shape, dtype=enc.dtype)
    big_endian = bool(msg.is_bigendian) and enc.dtype.itemsize > 1
    wire = enc.dtype.newbyteorder(">" if big_endian else "<")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, :width * enc.channels * enc.dtype.itemsize]
    array = pixels.copy().view(wire).reshape(shape)  # owns its memory, independent of the message
    return array.astype(enc.dtype, copy=False)  # byte-swaps only when the wire order is not the host's


def rgb_from_image(msg: Image) -> np.ndarray:
    """A colour or grey Image -> uint8 RGB (H, W, 3), what the model takes.

    Depth encodings (16UC1, 32FC1) and anything not in :data:`COLOUR_ENCODINGS` are refused.
    """
    if msg.encoding not in COLOUR_ENCODINGS:
        raise ImageConversionError(
            f"encoding '{msg.encoding}' is not a colour image; the image topic takes "
            f"{', '.join(COLOUR_ENCODINGS)}")
    array = image_to_numpy(msg)
    encoding = msg.encoding
    if encoding == "rgb8":
        return array
    if encoding == "bgr8":
        return np.ascontiguousarray(array[..., ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(array[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(array[..., 2::-1])
    if encoding == "mono16":
        array = _brightest_to_255(array)
    return np.repeat(array[..., None], 3, axis=2)


def _brightest_to_255(array: np.ndarray) -> np.ndarray:
    """uint16 pixels -> uint8: 10-, 12- and 16-bit sensors alike, the brightest pixel becomes 255
    (a frame whose pixels are all below 255 is kept as it is)."""
    scale = 255.0 / max(int(array.max(initial=0)), 255)
    return np.round(array * scale).astype(np.uint8)


def rgb_from_compressed(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    """A CompressedImage (JPEG or PNG, as image_transport's compressed plugin publishes) -> uint8
    RGB (H, W, 3). The size is read from the header first, so a file claiming more than
    ``max_pixels`` is refused before any pixel is decoded."""
    if "compresseddepth" in msg.format.lower().replace(" ", ""):
        raise ImageConversionError(f"format '{msg.format}' is compressed depth; the image topic takes colour")
    data = bytes(msg.data)
    try:
        with PILImage.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception as e:  # PIL raises several kinds for data that is not an image
        raise ImageConversionError(f"compressed image (format '{msg.format}') cannot be read: {e}") from None
    if width * height > max_pixels:
        raise ImageConversionError(f"compressed image of {width}x{height} is larger than {max_pixels} pixels")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        raise ImageConversionError(f"compressed image (format '{msg.format}', {width}x{height}) cannot be decoded")
    if decoded.dtype == np.uint16:  # 16-bit PNG (mono16, bgr16): scaled as raw mono16 is
        decoded = _brightest_to_255(decoded)
    elif decoded.dtype != np.uint8:
        raise ImageConversionError(f"compressed image of {decoded.dtype} pixels is not supported")
    if decoded.ndim == 2:
        return np.repeat(decoded[..., None], 3, axis=2)
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def rgb_from_message(msg: Image | CompressedImage, max_pixels: int) -> np.ndarray:
    """Either kind of camera message -> uint8 RGB (H, W, 3); larger than ``max_pixels`` is refused
    before any copy is made. A message with a ``format`` field is a CompressedImage."""
    if hasattr(msg, "format"):
        return rgb_from_compressed(msg, max_pixels)
    if msg.width * msg.height > max_pixels:
        raise ImageConversionError(f"{msg.width}x{msg.height} is larger than {max_pixels} pixels")
    return rgb_from_image(msg)


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """The sensor_msgs/Image fields (all but the header) for an array with the given encoding
    (dtype and channels must match it): tightly packed rows, the host's byte order, ``data`` as a
    flat uint8 array."""
    enc = _encoding(encoding)
    expected_ndim = 2 if enc.channels == 1 else 3
    if array.ndim != expected_ndim or (enc.channels > 1 and array.shape[2] != enc.channels):
        raise ImageConversionError(f"array of shape {array.shape} does not fit encoding '{encoding}' "
                                   f"({enc.channels} channel(s))")
    if array.dtype != enc.dtype:
        raise ImageConversionError(f"array dtype {array.dtype} does not fit encoding '{encoding}' ({enc.dtype})")
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    return dict(height=height, width=width, encoding=encoding, is_bigendian=int(_HOST_BIG_ENDIAN),
                step=width * enc.channels * enc.dtype.itemsize, data=array.reshape(-1).view(np.uint8))


def numpy_to_image(array: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """An array -> rclpy Image message with the given encoding (see :func:`image_fields`)."""
    from sensor_msgs.msg import Image  # rclpy's message class: only this function needs ROS

    fields = image_fields(array, encoding)
    msg = Image(**{name: value for name, value in fields.items() if name != "data"})
    if header is not None:
        msg.header = header
    msg.data = fields["data"].tobytes()
    return msg
