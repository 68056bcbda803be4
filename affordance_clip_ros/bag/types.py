"""Message types for bags without ROS: rosbags' typestore of the standard ROS 2 messages plus
this package's own messages, registered from their ``.msg`` files."""
from __future__ import annotations

import sys
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ..ros.conversions import image_fields
from ..ros.result_messages import MessageTypes

PACKAGE = "affordance_clip_ros"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_STAMPED = "geometry_msgs/msg/PointStamped"
RESULT = f"{PACKAGE}/msg/AffordanceResult"


def message_folder() -> Path:
    """This package's ``.msg`` files: ``share/affordance_clip_ros/msg`` of the colcon or pip install
    this module belongs to, or ``msg/`` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    candidates = []
    for folder in package.parents:
        candidates.append(folder / "share" / PACKAGE / "msg")
        if (folder / "package.xml").is_file():
            candidates.append(folder / "msg")
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "msg")
    for folder in candidates:
        if any(folder.glob("*.msg")):
            return folder
    raise FileNotFoundError(f"the {PACKAGE} message definitions (*.msg) were not found; looked in "
                            f"{', '.join(map(str, dict.fromkeys(candidates)))}. Build with colcon or pip install the "
                            "package (both install them under share/affordance_clip_ros/msg)")


def typestore(folder: Path | None = None):
    """The latest ROS 2 typestore with this package's messages added."""
    folder = folder or message_folder()
    files = sorted(folder.glob("*.msg"))
    if not files:
        raise FileNotFoundError(f"no message definitions (*.msg) in {folder}")
    store = get_typestore(Stores.LATEST)
    types = {}
    for path in files:
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def message_types(store) -> MessageTypes:
    """What ``result_messages`` builds from, as rosbags message classes."""
    t = store.types
    image_class = t[IMAGE]

    def image(array, encoding: str, header):
        return image_class(header=header, **image_fields(array, encoding))

    return MessageTypes(image=image, Point=t["geometry_msgs/msg/Point"], Vector3=t["geometry_msgs/msg/Vector3"],
                        PointStamped=t[POINT_STAMPED],
                        ContactPoint=t[f"{PACKAGE}/msg/ContactPoint"], AffordanceMap=t[f"{PACKAGE}/msg/AffordanceMap"],
                        AffordanceResult=t[RESULT])
