"""`colcon test --packages-select affordance_clip_ros` on a build with BUILD_TESTING on runs this
pytest suite through ament_cmake_pytest, as on an apt ROS workspace, and passes.

The inner run is limited (PYTEST_ADDOPTS -k) to modules that show the wiring: the installed copy is
imported (test_ros_build) and the dependency lists agree (test_dependencies); the whole suite runs
through `make test` anyway. It builds into a temporary tree, so the checkout's install/ is untouched.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "affordance_clip_ros"
INNER = "test_ros_build or test_dependencies"


def test_colcon_test_runs_the_pytest_suite_and_passes(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": "C.UTF-8",
           "ROS_DISTRO": os.environ.get("ROS_DISTRO", "kilted"), "VENV": sys.prefix,
           "BUILD_BASE": str(tmp_path / "build"), "INSTALL_BASE": str(tmp_path / "install"),
           "LOG_BASE": str(tmp_path / "log"), "PYTEST_ADDOPTS": f'-k "{INNER}"'}
    build = subprocess.run(["bash", "scripts/build_ros.sh"], cwd=ROOT, env={**env, "BUILD_TESTING": "ON"},
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr

    def colcon(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/with_ros.sh", "colcon", "--log-base", env["LOG_BASE"], *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    run = colcon("test", "--base-paths", str(ROOT), "--build-base", env["BUILD_BASE"],
                 "--install-base", env["INSTALL_BASE"], "--packages-select", PKG,
                 "--event-handlers", "console_direct+")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    results = colcon("test-result", "--test-result-base", env["BUILD_BASE"], "--verbose")
    assert results.returncode == 0, results.stdout + results.stderr
    [report] = (tmp_path / "build" / PKG / "test_results" / PKG).glob("pytest.xunit.xml")
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors = (int(suite.get(k)) for k in ("tests", "failures", "errors"))
    assert tests >= 10 and failures == 0 and errors == 0, (tests, failures, errors)
    assert "test_colcon_test" not in report.read_text(), "the inner run must not start this test again"
