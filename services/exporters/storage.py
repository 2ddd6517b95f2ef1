"""NFS storage usage exporter: bytes and files per home and per project folder, and the file system's fill.

Series (gauges):

- ``aiinfn_storage_used_bytes{kind="home"|"project", name}``: apparent size of the regular files in the
  folder (a file with several hard links inside the folder counts once), like ``du --apparent-size -s``.
- ``aiinfn_storage_files{kind, name}``: regular files in the folder; ``aiinfn_storage_directories{kind, name}``.
- ``aiinfn_storage_filesystem_size_bytes`` / ``_avail_bytes`` / ``_files`` / ``_files_free``: statvfs of the export.
- ``aiinfn_storage_scan_timestamp_seconds``, ``aiinfn_storage_scan_duration_seconds``, ``aiinfn_storage_scan_errors``.

A full walk of a large NFS tree takes minutes, so it runs in a background thread every ``--interval`` seconds
and scrapes serve the last finished scan. Symbolic links are never followed (a link out of a home must not
count, nor loop). Run (the runtime image names this module aiinfn.exporters.storage): ``python -m aiinfn.exporters.storage --root /exports --homes homes --projects projects``.
"""

from __future__ import annotations

import argparse
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderUsage:
    bytes: int = 0
    files: int = 0
    directories: int = 0
    errors: int = 0


@dataclass
class Scan:
    folders: dict[tuple[str, str], FolderUsage] = field(default_factory=dict)  # (kind, name) -> usage
    fs_size: int = 0
    fs_avail: int = 0
    fs_files: int = 0
    fs_files_free: int = 0
    timestamp: float = 0.0
    duration: float = 0.0


def folder_usage(path: Path) -> FolderUsage:
    """Walk one folder without following links; hard-linked files count once."""
    usage = FolderUsage()
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            usage.errors += 1
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                usage.errors += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                usage.directories += 1
                stack.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                usage.files += 1
                usage.bytes += st.st_size
    return usage


def scan(root: Path, homes: str, projects: str) -> Scan:
    start = time.monotonic()
    out = Scan()
    for kind, sub in (("home", homes), ("project", projects)):
        base = root / sub
        try:
            children = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            continue
        for entry in children:
            if entry.is_dir(follow_symlinks=False):
                out.folders[(kind, entry.name)] = folder_usage(Path(entry.path))
    vfs = os.statvfs(root)
    out.fs_size = vfs.f_blocks * vfs.f_frsize
    out.fs_avail = vfs.f_bavail * vfs.f_frsize
    out.fs_files = vfs.f_files
    out.fs_files_free = vfs.f_favail
    out.timestamp = time.time()
    out.duration = time.monotonic() - start
    return out


class StorageCollector:
    """Serves the last scan; ``refresh()`` replaces it (called by the background thread)."""

    def __init__(self, root: Path, homes: str = "homes", projects: str = "projects") -> None:
        self.root, self.homes, self.projects = root, homes, projects
        self.last: Scan | None = None
        self.lock = threading.Lock()

    def refresh(self) -> Scan:
        result = scan(self.root, self.homes, self.projects)
        with self.lock:
            self.last = result
        return result

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        with self.lock:
            s = self.last
        if s is None:
            return
        used = GaugeMetricFamily("aiinfn_storage_used_bytes", "Apparent size of the regular files of the folder",
                                 labels=["kind", "name"])
        files = GaugeMetricFamily("aiinfn_storage_files", "Regular files in the folder", labels=["kind", "name"])
        dirs = GaugeMetricFamily("aiinfn_storage_directories", "Directories in the folder", labels=["kind", "name"])
        errors = 0
        for (kind, name), u in sorted(s.folders.items()):
            used.add_metric([kind, name], u.bytes)
            files.add_metric([kind, name], u.files)
            dirs.add_metric([kind, name], u.directories)
            errors += u.errors
        yield used
        yield files
        yield dirs
        yield GaugeMetricFamily("aiinfn_storage_filesystem_size_bytes", "Size of the exported file system", value=s.fs_size)
        yield GaugeMetricFamily("aiinfn_storage_filesystem_avail_bytes", "Bytes available to users on the export", value=s.fs_avail)
        yield GaugeMetricFamily("aiinfn_storage_filesystem_files", "Inodes of the exported file system", value=s.fs_files)
        yield GaugeMetricFamily("aiinfn_storage_filesystem_files_free", "Free inodes of the export", value=s.fs_files_free)
        yield GaugeMetricFamily("aiinfn_storage_scan_timestamp_seconds", "When the last scan finished", value=s.timestamp)
        yield GaugeMetricFamily("aiinfn_storage_scan_duration_seconds", "How long the last scan took", value=s.duration)
        yield GaugeMetricFamily("aiinfn_storage_scan_errors", "Entries the last scan could not read", value=errors)


def main(argv: list[str] | None = None) -> int:
    from prometheus_client import REGISTRY, start_http_server

    p = argparse.ArgumentParser(prog="aiinfn-storage-exporter", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="the NFS export, mounted read-only")
    p.add_argument("--homes", default="homes", help="folder of the homes, relative to --root")
    p.add_argument("--projects", default="projects", help="folder of the project folders, relative to --root")
    p.add_argument("--interval", type=float, default=1800, help="seconds between scans")
    p.add_argument("--port", type=int, default=9402)
    p.add_argument("--address", default="0.0.0.0")
    args = p.parse_args(argv)
    collector = StorageCollector(args.root, args.homes, args.projects)
    REGISTRY.register(collector)
    start_http_server(args.port, addr=args.address)
    while True:
        started = time.monotonic()
        collector.refresh()
        time.sleep(max(1.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    raise SystemExit(main())
