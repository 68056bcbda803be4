"""The pip route (no ROS): setup.py builds a wheel with the model configs, the message definitions
(for `affordance-clip bag`) and the console script."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_wheel_holds_the_library_configs_and_command(tmp_path):
    source = tmp_path / "src"  # a copy, so that setuptools' build/ and egg-info stay out of the checkout
    shutil.copytree(ROOT / "affordance_clip_ros", source / "affordance_clip_ros",
                    ignore=shutil.ignore_patterns("__pycache__", "msg"))
    for name in ("setup.py", "requirements.txt", "MANIFEST.in"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "msg", source / "msg")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    [wheel] = tmp_path.glob("affordance_clip_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("affordance_clip_ros/model/grounder.py", "affordance_clip_ros/model/configs/RN-tiny.json",
                   "affordance_clip_ros/cli.py", "affordance_clip_ros/training/__init__.py",
                   "affordance_clip_ros/evaluation/__init__.py", "affordance_clip_ros/bag/command.py"):
        assert needed in names, needed
    for msg in (ROOT / "msg").glob("*.msg"):  # installed to <prefix>/share/affordance_clip_ros/msg
        assert f"affordance_clip_ros-0.1.0.data/data/share/affordance_clip_ros/msg/{msg.name}" in names, msg.name
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "affordance-clip = affordance_clip_ros.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # Installed, the bag command finds the definitions in the prefix's share/.
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--prefix",
                    str(prefix), str(wheel)], check=True, capture_output=True)
    [site] = prefix.glob("lib/python*/site-packages")
    code = "from affordance_clip_ros.bag.types import message_folder; print(message_folder())"
    found = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path).stdout.strip()
    assert Path(found) == prefix / "share" / "affordance_clip_ros" / "msg"
