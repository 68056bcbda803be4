#!/usr/bin/env python3
"""Point the ROS 2 wheels' CMake exports at this interpreter's Python and numpy headers.

The ROS 2 PyPI wheels were built in a manylinux image, and their
``export_<pkg>__rosidl_generator_pyExport.cmake`` files hard-code that image's include
directories::

    /opt/python/cp311-cp311/include/python3.11
    /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include

(``cp312-cp312`` and ``python3.12`` in the wheels for Python 3.12, and so on.)

Building our own messages links against those targets, so CMake fails on the missing paths.
This script rewrites them, in every ``*.cmake`` file under the virtualenv's ``share/`` and
``lib/``, to ``sysconfig``'s include directory and ``numpy.get_include()``. It is idempotent
(a second run changes nothing) and is run by ``make setup`` after the wheels are installed.

Usage: python scripts/fix_ros_wheels.py [--prefix PREFIX] [--dry-run]
(PREFIX defaults to ``sys.prefix``, i.e. the virtualenv this interpreter belongs to).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import sysconfig
from pathlib import Path

LOG = logging.getLogger("fix_ros_wheels")

#: The build image's Python prefix, as it appears in the wheels' CMake files (any CPython 3).
BUILD_PREFIX = "/opt/python/cp3"
_PREFIX = r"/opt/python/cp3\d+-cp3\d+"
#: ``<prefix>/include/python3.X``.
_PY_INCLUDE = re.compile(_PREFIX + r"/include/python3\.\d+")
#: ``<prefix>/lib/python3.X/site-packages/numpy/(_core|core)/include``.
_NUMPY_INCLUDE = re.compile(_PREFIX + r"/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


def target_paths() -> tuple[str, str]:
    """This interpreter's Python include dir and numpy include dir (both must exist)."""
    py_include = sysconfig.get_paths()["include"]
    if not Path(py_include, "Python.h").is_file():
        raise SystemExit(
            f"Python.h not found in {py_include}: install the Python development headers "
            "(e.g. python3-dev) for this interpreter"
        )
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - setup installs numpy first
        raise SystemExit(f"numpy is not importable from {sys.executable}: {exc}") from exc
    return py_include, numpy.get_include()


def find_cmake_files(prefix: Path) -> list[Path]:
    """``*.cmake`` files under ``prefix/share`` and ``prefix/lib`` mentioning the build prefix."""
    found: list[Path] = []
    for sub in ("share", "lib"):
        root = prefix / sub
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.cmake")):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if BUILD_PREFIX in text:
                found.append(path)
    return found


def rewrite(text: str, py_include: str, numpy_include: str) -> str:
    # numpy first: its pattern is the more specific one under the same prefix.
    text = _NUMPY_INCLUDE.sub(lambda _m: numpy_include, text)
    return _PY_INCLUDE.sub(lambda _m: py_include, text)


def fix(prefix: Path, dry_run: bool = False) -> list[Path]:
    """Rewrite the files under ``prefix``; return those changed (or that would change)."""
    py_include, numpy_include = target_paths()
    changed: list[Path] = []
    for path in find_cmake_files(prefix):
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, py_include, numpy_include)
        if new == text:
            # The build prefix appears, but not in a form we know how to map: say so.
            LOG.warning("%s mentions %s in an unrecognised form; left unchanged",
                        path, BUILD_PREFIX)
            continue
        changed.append(path)
        LOG.info("%s %s", "would fix" if dry_run else "fixed", path.relative_to(prefix))
        if not dry_run:
            path.write_text(new, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="virtualenv prefix holding the ROS wheels' share/ and lib/ "
                             "(default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="report, do not write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fix_ros_wheels: %(message)s")

    py_include, numpy_include = target_paths()
    changed = fix(args.prefix.resolve(), dry_run=args.dry_run)
    if changed:
        LOG.info("%s %d CMake export file(s): Python include -> %s, numpy include -> %s",
                 "would rewrite" if args.dry_run else "rewrote", len(changed),
                 py_include, numpy_include)
    else:
        LOG.info("nothing to do: no CMake file under %s refers to %s", args.prefix, BUILD_PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
