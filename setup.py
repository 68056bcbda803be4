"""pip installation of the library and the ``affordance-clip`` command, without ROS.

On a ROS 2 system the package is built by colcon through CMakeLists.txt instead, which also
generates the ``affordance_clip_ros.msg`` interfaces.
"""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup


def requirements() -> list[str]:
    """The ranges in requirements.txt, the one list of what the package needs."""
    lines = Path(__file__).with_name("requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="affordance_clip_ros",
    version="0.1.0",
    description="Open-vocabulary affordance grounding with frozen CLIP and a trained FPN (AffordanceCLIP)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["affordance_clip_ros", "affordance_clip_ros.*"]),
    package_data={"affordance_clip_ros.model": ["configs/*.json"]},
    # The message definitions, where a colcon install has them too: `affordance-clip bag` reads them.
    data_files=[("share/affordance_clip_ros/msg", glob("msg/*.msg"))],
    install_requires=requirements(),
    entry_points={"console_scripts": ["affordance-clip = affordance_clip_ros.cli:main"]},
)
