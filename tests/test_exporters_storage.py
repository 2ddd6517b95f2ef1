"""Storage usage exporter on a real directory tree (sizes and counts computed by hand)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.exporters.storage import StorageCollector, folder_usage


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def make_tree(root):
    # alice: 3 files (1000 + 2500 + 0 bytes) in nested folders, a hard link (counted once), a symlink
    # out of her home to bob's big file (never followed) and a link loop.
    write(root / "homes/alice/a.txt", 1000)
    write(root / "homes/alice/deep/er/b.bin", 2500)
    write(root / "homes/alice/empty", 0)
    os.link(root / "homes/alice/a.txt", root / "homes/alice/deep/a-hardlink")
    write(root / "homes/bob/big.dat", 1_000_000)
    os.symlink(root / "homes/bob/big.dat", root / "homes/alice/link-to-bob")
    os.symlink(root / "homes/alice", root / "homes/alice/deep/loop")
    (root / "homes/carol").mkdir()  # an empty home still shows up with 0
    write(root / "projects/cms-tracking/data/x.h5", 123_456)
    write(root / "projects/cms-tracking/data/y.h5", 654_321)
    write(root / "other/not-scanned", 999)  # outside homes/ and projects/


def scrape(collector):
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, s.labels.get("kind"), s.labels.get("name"))] = s.value
    return out


def test_folder_usage_counts_files_once_and_never_follows_links(tmp_path):
    make_tree(tmp_path)
    u = folder_usage(tmp_path / "homes/alice")
    assert (u.bytes, u.files) == (1000 + 2500 + 0, 3)
    assert u.directories == 2  # deep, deep/er (the loop is a symlink, not a directory)
    assert u.errors == 0


def test_exporter_series_per_home_and_project(tmp_path):
    make_tree(tmp_path)
    c = StorageCollector(tmp_path, "homes", "projects")
    assert scrape(c) == {}  # nothing before the first scan
    c.refresh()
    m = scrape(c)
    assert m[("aiinfn_storage_used_bytes", "home", "alice")] == 3500
    assert m[("aiinfn_storage_files", "home", "alice")] == 3
    assert m[("aiinfn_storage_used_bytes", "home", "bob")] == 1_000_000
    assert m[("aiinfn_storage_used_bytes", "home", "carol")] == 0
    assert m[("aiinfn_storage_files", "home", "carol")] == 0
    assert m[("aiinfn_storage_used_bytes", "project", "cms-tracking")] == 123_456 + 654_321
    assert m[("aiinfn_storage_files", "project", "cms-tracking")] == 2
    assert not [k for k in m if k[2] == "other"]
    st = os.statvfs(tmp_path)
    assert m[("aiinfn_storage_filesystem_size_bytes", None, None)] == st.f_blocks * st.f_frsize
    assert 0 < m[("aiinfn_storage_filesystem_avail_bytes", None, None)] <= st.f_blocks * st.f_frsize
    assert m[("aiinfn_storage_scan_errors", None, None)] == 0


def test_rescan_sees_changes(tmp_path):
    make_tree(tmp_path)
    c = StorageCollector(tmp_path, "homes", "projects")
    c.refresh()
    (tmp_path / "homes/alice/a.txt").unlink()  # the hard link keeps the data: still 1000 bytes, still one file
    write(tmp_path / "homes/carol/new", 42)
    c.refresh()
    m = scrape(c)
    assert m[("aiinfn_storage_used_bytes", "home", "alice")] == 3500
    assert m[("aiinfn_storage_used_bytes", "home", "carol")] == 42


def test_unreadable_folder_is_counted_as_error(tmp_path):
    make_tree(tmp_path)
    locked = tmp_path / "homes/bob/private"
    locked.mkdir()
    write(locked / "secret", 10)
    locked.chmod(0)
    try:
        u = folder_usage(tmp_path / "homes/bob")
    finally:
        locked.chmod(0o700)
    if os.geteuid() == 0:  # root reads through mode 000 (as the exporter with DAC_READ_SEARCH does)
        assert (u.bytes, u.errors) == (1_000_010, 0)
    else:
        assert (u.bytes, u.errors) == (1_000_000, 1)
