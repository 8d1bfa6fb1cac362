"""What the agent reports: sizes of sparse images, block devices and file trees."""

from __future__ import annotations

import os
from pathlib import Path

from agent import config, inventory
from cbr.v1 import common_pb2
from tests.support.environment import unavailable


def _config(tmp_path: Path) -> config.AgentConfig:
    images = tmp_path / "images"
    images.mkdir()
    with open(images / "sys.img", "wb") as fh:  # sparse: 1 GiB apparent, a few bytes used
        fh.truncate(1 << 30)
        fh.write(b"boot")
    (images / "data.img").write_bytes(b"\0" * 4096)
    with open(images / "vol.img", "wb") as fh:
        fh.truncate(10 << 20)
    share = tmp_path / "share"
    (share / "sub" / "deeper").mkdir(parents=True)
    (share / "a.txt").write_bytes(b"x" * 100)
    (share / "sub" / "b.bin").write_bytes(b"y" * 1000)
    (share / "sub" / "deeper" / "c").write_bytes(b"z" * 10)
    os.symlink(images / "sys.img", share / "link-to-image")  # not followed
    return config.AgentConfig(
        name="host", controller="", state_dir=tmp_path / "state",
        servers=(config.ServerSpec("web-1", (
            config.DiskSpec("system", str(images / "sys.img"), True),
            config.DiskSpec("data", str(images / "data.img")),
        ), {"env": "prod"}),),
        disks=(config.SingleDiskSpec("vol-1", str(images / "vol.img")),),
        file_systems=(config.FileSystemSpec("share", str(share)),),
    )


def test_sizes_are_apparent_for_sparse_images_and_summed_for_trees(tmp_path: Path) -> None:
    scanned = {p.local_id: p for p in inventory.scan(_config(tmp_path)).protectables}
    server = scanned["server:web-1"]
    assert server.type == common_pb2.OBJECT_TYPE_SERVER
    assert server.size_bytes == (1 << 30) + 4096
    system = [d for d in server.disks if d.system_disk]
    assert [d.id for d in system] == ["server:web-1/disk:system"]
    assert system[0].size_bytes == 1 << 30 and system[0].device_type == "file"
    assert [(t.key, t.value) for t in server.tags] == [("env", "prod")]
    assert scanned["disk:vol-1"].size_bytes == 10 << 20
    assert scanned["disk:vol-1"].type == common_pb2.OBJECT_TYPE_DISK
    fs = scanned["turbo:share"]
    assert fs.type == common_pb2.OBJECT_TYPE_TURBO
    assert fs.size_bytes == 1110
    assert not any(p.error for p in scanned.values())


def test_missing_image_and_directory_are_reported_with_an_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    os.unlink(cfg.servers[0].disks[1].path)
    os.rename(cfg.file_systems[0].path, tmp_path / "moved")
    scanned = {p.local_id: p for p in inventory.scan(cfg).protectables}
    assert "disk data" in scanned["server:web-1"].error
    assert "no such file" in scanned["server:web-1"].error
    assert scanned["server:web-1"].size_bytes == 1 << 30
    assert "no such file" in scanned["turbo:share"].error


def test_a_directory_is_not_a_disk(tmp_path: Path) -> None:
    cfg = config.AgentConfig(name="h", controller="", state_dir=tmp_path,
                             disks=(config.SingleDiskSpec("d", str(tmp_path)),))
    [disk] = inventory.scan(cfg).protectables
    assert "neither a regular file" in disk.error


def test_block_device_size_is_read_by_seeking_to_its_end() -> None:
    devices = [p for p in ("/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1")
               if os.path.exists(p) and os.access(p, os.R_OK)]
    if not devices:
        unavailable("no readable block device on this host")
    size = inventory.device_size(devices[0])
    assert size.device_type == "block" and size.size_bytes >= 0


def test_digest_changes_only_when_the_inventory_does(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    first = inventory.digest(inventory.scan(cfg))
    assert inventory.digest(inventory.scan(cfg)) == first
    (Path(cfg.file_systems[0].path) / "new").write_bytes(b"1")
    assert inventory.digest(inventory.scan(cfg)) != first


def test_counting_a_tree_leaves_its_access_times_as_they_were(tmp_path: Path) -> None:
    """The inventory walks protected trees every rescan; a change journal
    does not see reads, so a walk that set access times would make the next
    incremental record times the source no longer shows (the torture test
    found directories' atimes moved under relatime)."""
    _config(tmp_path)
    share = tmp_path / "share"
    dirs = [share, share / "sub", share / "sub" / "deeper"]
    for d in dirs:
        os.utime(d, ns=(1_000_000_000, 2_000_000_000))  # stale: relatime would update it
    assert inventory.tree_size(str(share)).size_bytes == 1110
    assert [os.lstat(d).st_atime_ns for d in dirs] == [1_000_000_000] * 3
