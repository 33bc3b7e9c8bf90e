"""The machine a benchmark ran on: CPUs, memory, file system and disk, Python and library versions."""

from __future__ import annotations

import os
import platform
import sqlite3
from typing import Any

import msgpack
import numpy
import xxhash

import logstore


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _mount(path: str) -> tuple[str, str, str] | None:
    """(device, mount point, file system type) holding ``path``, from ``/proc/mounts``."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                device, mount, fstype = parts[0], parts[1], parts[2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        return None
    return best


def _disk(device: str) -> str | None:
    """What sysfs says of the block device: rotational or not, and its model when it has one."""
    name = os.path.basename(device)
    base = f"/sys/class/block/{name}"
    if not os.path.exists(base):
        return None
    facts = []
    for path, label in ((f"{base}/queue/rotational", "rotational"), (f"{base}/device/model", "model")):
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError:
            continue
        if label == "rotational":
            facts.append("rotational" if value == "1" else "non-rotational")
        elif value:
            facts.append(value)
    try:
        with open(f"{base}/size", encoding="utf-8") as f:
            facts.append(f"{int(f.read()) * 512 / 2**30:.0f} GiB")
    except (OSError, ValueError):
        pass
    return ", ".join(facts) or None


def machine_facts(bench_dir: str) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mount = _mount(bench_dir)
    try:
        import lmdb

        lmdb_version = f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})"
    except ImportError:
        lmdb_version = None
    mem = _memory_gib()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "memory": None if mem is None else f"{mem:.1f} GiB",
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "logstore": logstore.__version__,
        "numpy": numpy.__version__,
        "msgpack": ".".join(str(v) for v in msgpack.version),
        "xxhash": xxhash.VERSION,
        "sqlite": sqlite3.sqlite_version,
        "lmdb": lmdb_version,
        "filesystem": None if mount is None else f"{mount[2]} ({mount[0]} on {mount[1]})",
        "disk": None if mount is None else _disk(mount[0]),
    }
