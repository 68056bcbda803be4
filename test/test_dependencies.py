"""What a robot installs (ranges) and what CI tests (exact locks) agree, and package.xml names it all.

requirements.txt holds ranges (``pip install .``, an apt ROS workspace); requirements/<distro>.txt
are the development locks that ``make`` installs. Every lock must satisfy every range, so CI
proves the ranges on the versions it ran; package.xml must name each library by its rosdep key or
leave it to requirements/ros-pip.txt.
"""
from __future__ import annotations

import importlib.metadata
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DISTROS = ("jazzy", "kilted")
# pip distribution -> rosdep key (ros/rosdistro rosdep/python.yaml); None: no key, from ros-pip.txt
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "torch": "python3-torch", "torchvision": "python3-torchvision",
    "opencv-python-headless": "python3-opencv", "pillow": "python3-pil", "scikit-image": "python3-skimage",
    "scipy": "python3-scipy", "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib",
    "pyyaml": "python3-yaml", "onnxruntime": "python3-onnxruntime-pip",
    "rosbags": "python3-rosbags-pip",
    "open-clip-torch": None, "safetensors": None, "pycocotools": None, "onnx": None, "mcap": None,
}
TEST_KEYS = {"pytest": "python3-pytest", "hypothesis": "python3-hypothesis", "packaging": "python3-packaging"}


def _requirements(path: Path) -> dict[str, Requirement]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def _package_xml_keys(tag: str) -> set[str]:
    return {e.text.strip() for e in ET.parse(ROOT / "package.xml").getroot().iter(tag)}


RANGES = _requirements(ROOT / "requirements.txt")


def test_what_a_robot_installs_has_ranges_not_pins():
    assert RANGES, "requirements.txt is empty"
    pinned = [str(r) for r in RANGES.values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"requirements.txt pins {pinned}: give ranges, exact versions go in requirements/<distro>.txt"
    assert "numpy" in RANGES and RANGES["numpy"].specifier.contains("1.26.4"), \
        "requirements.txt must accept Ubuntu 24.04's numpy 1.26"


@pytest.mark.parametrize("distro", DISTROS)
def test_each_lock_satisfies_every_range(distro):
    lock = _requirements(ROOT / "requirements" / f"{distro}.txt")
    for name, requirement in RANGES.items():
        assert name in lock, f"requirements/{distro}.txt does not pin {name}"
        [pin] = lock[name].specifier
        assert pin.operator == "==", f"requirements/{distro}.txt: {lock[name]} is not an exact pin"
        assert requirement.specifier.contains(pin.version), \
            f"requirements/{distro}.txt pins {name}=={pin.version}, outside requirements.txt's {requirement}"


def test_jazzy_lock_runs_on_ubuntu_24_04_numpy():
    numpy = _requirements(ROOT / "requirements" / "jazzy.txt")["numpy"]
    assert str(numpy.specifier).startswith("==1.26"), numpy


def test_package_xml_names_every_library_by_its_rosdep_key():
    assert set(RANGES) == set(ROSDEP_KEYS), "requirements.txt and ROSDEP_KEYS list different libraries"
    declared = _package_xml_keys("exec_depend")
    missing = {name: key for name, key in ROSDEP_KEYS.items() if key and key not in declared}
    assert not missing, f"package.xml lacks exec_depend for {missing}"
    python_keys = {k for k in declared if k.startswith("python3-")}
    extra = python_keys - set(ROSDEP_KEYS.values())
    assert not extra, f"package.xml declares {extra}, which requirements.txt does not list"
    assert set(TEST_KEYS.values()) <= _package_xml_keys("test_depend")


def test_ros_pip_lists_exactly_the_libraries_without_an_apt_rosdep_key():
    """On an apt install, rosdep installs the apt keys; ros-pip.txt the rest (no key, or a pip key)."""
    ros_pip = _requirements(ROOT / "requirements" / "ros-pip.txt")
    expected = {name for name, key in ROSDEP_KEYS.items() if key is None or key.endswith("-pip")}
    assert set(ros_pip) == expected
    for name, requirement in ros_pip.items():
        assert requirement.specifier == RANGES[name].specifier, f"ros-pip.txt and requirements.txt disagree on {name}"


def test_this_environment_is_the_lock_of_its_distro():
    """make test runs in .venv-<distro>, installed from requirements/<distro>.txt: the versions that
    ran are the versions the lock names (numpy 1.26 on Jazzy)."""
    distro = os.environ.get("ROS_DISTRO", "kilted")
    if distro not in DISTROS:
        pytest.fail(f"ROS_DISTRO={distro}: run the tests through make or scripts/with_ros.sh", pytrace=False)
    lock = _requirements(ROOT / "requirements" / f"{distro}.txt")
    wrong = {}
    for name, requirement in lock.items():
        [pin] = requirement.specifier
        installed = importlib.metadata.version(name)
        if installed != pin.version:
            wrong[name] = installed
    assert not wrong, f"installed versions differ from requirements/{distro}.txt: {wrong}"
