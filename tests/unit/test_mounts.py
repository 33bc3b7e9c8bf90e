"""The file system of a store directory, from a mount table, and the refusal of network file systems.

The tests write mount tables in ``/proc/self/mountinfo``'s format to files of
their own and point :mod:`logstore.embedded.mounts` at them, with mount points over
the test's real temporary directory: matched by that directory's real device
numbers, or, with device numbers that match nothing, by the mount point.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

import logstore
from logstore.embedded import mounts
from logstore.errors import LogStoreError, NetworkFileSystemError


def escape(path: str) -> str:
    """A path as the kernel writes it in mountinfo: backslash, space, tab and newline as octal escapes."""
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        path = path.replace(char, code)
    return path


def line(mount_id: int, dev: tuple[int, int], mount_point: str, fstype: str, optional: str = "shared:1") -> str:
    fields = [str(mount_id), "1", f"{dev[0]}:{dev[1]}", "/", escape(mount_point), "rw,relatime"]
    if optional:
        fields.append(optional)
    fields += ["-", fstype, f"src{mount_id}", "rw"]
    return " ".join(fields)


def table(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("".join(f"{text}\n" for text in lines))
    return str(path)


def device(path: Path) -> tuple[int, int]:
    dev = os.stat(path).st_dev
    return os.major(dev), os.minor(dev)


def elsewhere(path: Path, n: int) -> tuple[int, int]:
    """Device numbers that are not those of ``path``'s file system (nor of each other, for each ``n``)."""
    major, _ = device(path)
    return major + 1000 + n, 7


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store directory beside the mount table, by its real path (no symbolic link on the way)."""
    path = Path(os.path.realpath(tmp_path)) / "store"
    path.mkdir()
    return path


def test_the_mount_with_the_directorys_device_wins_over_a_longer_prefix(tmp_path: Path, store_dir: Path) -> None:
    info = table(
        tmp_path,
        line(20, elsewhere(store_dir, 0), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), str(store_dir), "ext4"),  # the longest prefix, another device
        line(22, device(store_dir), "/srv/share", "nfs4"),  # no prefix, but the directory's device
    )
    assert mounts.network_filesystem(str(store_dir), info) == "nfs4"
    found = mounts.find_mount(str(store_dir), info)
    assert found is not None and (found.mount_point, found.source) == ("/srv/share", "src22")


def test_without_a_device_match_the_longest_mount_point_prefix_is_chosen(tmp_path: Path, store_dir: Path) -> None:
    parent = store_dir.parent
    info = table(
        tmp_path,
        line(20, elsewhere(store_dir, 0), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), str(parent), "nfs4"),
        line(22, elsewhere(store_dir, 2), str(store_dir) + "x", "ext4"),  # a sibling's name: not a prefix
        line(23, elsewhere(store_dir, 3), str(store_dir / "inner"), "ext4"),  # below the directory
    )
    assert mounts.network_filesystem(str(store_dir), info) == "nfs4"
    found = mounts.find_mount(str(store_dir), info)
    assert found is not None and found.mount_point == str(parent)
    # Under the local mount inside it, the same directory tree is local.
    inner = store_dir / "inner"
    inner.mkdir()
    assert mounts.network_filesystem(str(inner), info) is None
    # A directory that only shares a name's beginning with the network mount is local.
    assert mounts.network_filesystem(str(store_dir) + "x", info) is None


def test_of_several_mounts_with_the_device_the_longest_prefix_then_the_last_listed_wins(
    tmp_path: Path, store_dir: Path
) -> None:
    dev = device(store_dir)
    prefixed = table(
        tmp_path,
        line(20, dev, "/", "ext4"),
        line(21, dev, str(store_dir), "nfs4"),
        line(22, dev, "/unrelated", "cifs"),
    )
    assert mounts.network_filesystem(str(store_dir), prefixed) == "nfs4"
    no_prefix = table(tmp_path, line(20, dev, "/a", "ext4"), line(21, dev, "/b", "nfs"))
    assert mounts.network_filesystem(str(store_dir), no_prefix) == "nfs"
    no_prefix = table(tmp_path, line(20, dev, "/b", "nfs"), line(21, dev, "/a", "ext4"))
    assert mounts.network_filesystem(str(store_dir), no_prefix) is None


def test_of_mounts_at_one_mount_point_the_one_on_top_wins(tmp_path: Path, store_dir: Path) -> None:
    under = line(20, elsewhere(store_dir, 0), str(store_dir.parent), "ext4")
    top = line(21, elsewhere(store_dir, 1), str(store_dir.parent), "nfs4")
    assert mounts.network_filesystem(str(store_dir), table(tmp_path, under, top)) == "nfs4"
    assert mounts.network_filesystem(str(store_dir), table(tmp_path, top, under)) is None


def test_escaped_mount_points_are_unescaped(tmp_path: Path, store_dir: Path) -> None:
    odd = store_dir / "a b\tc\\d\ne\rf"  # the kernel writes a carriage return as it is
    odd.mkdir()
    info = table(
        tmp_path,
        line(20, elsewhere(store_dir, 0), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), str(odd), "nfs4"),
    )
    written = Path(info).read_bytes()
    assert b"\\040" in written and b"\\134" in written and b"\r" in written
    assert mounts.network_filesystem(str(odd), info) == "nfs4"
    found = mounts.find_mount(str(odd / "store"), info)
    assert found is not None and found.mount_point == str(odd)
    assert mounts.network_filesystem(str(store_dir), info) is None
    assert mounts.unescape(b"/x\\040y\\011z\\012w\\134v") == "/x y\tz\nw\\v"


def test_a_local_file_system_is_not_refused(tmp_path: Path, store_dir: Path) -> None:
    info = table(
        tmp_path,
        line(20, device(store_dir), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), "/mnt/nfs", "nfs4"),
    )
    assert mounts.network_filesystem(str(store_dir), info) is None
    mounts.check_local(str(store_dir), info)  # returns, raises nothing
    found = mounts.find_mount(str(store_dir), info)
    assert found is not None and (found.fstype, found.mount_point) == ("ext4", "/")


def test_an_unreadable_mount_table_skips_the_check(tmp_path: Path, store_dir: Path) -> None:
    for info in (str(tmp_path / "absent"), str(tmp_path)):  # missing; a directory
        assert mounts.read_mounts(info) is None
        assert mounts.find_mount(str(store_dir), info) is None
        assert mounts.network_filesystem(str(store_dir), info) is None
        mounts.check_local(str(store_dir), info)
    empty = table(tmp_path)
    assert mounts.read_mounts(empty) == []
    assert mounts.network_filesystem(str(store_dir), empty) is None


def test_check_local_names_the_path_type_and_mount_point_and_says_why(tmp_path: Path, store_dir: Path) -> None:
    info = table(tmp_path, line(21, device(store_dir), "/mnt/remote share", "nfs4"))
    with pytest.raises(NetworkFileSystemError) as raised:
        mounts.check_local(str(store_dir), info)
    err = raised.value
    message = str(err)
    assert str(store_dir) in message and "nfs4" in message and "/mnt/remote share" in message
    assert "shared memory" in message and "byte-range locks" in message and "local file system" in message
    assert (err.path, err.fstype, err.mount_point) == (str(store_dir), "nfs4", "/mnt/remote share")
    assert isinstance(err, LogStoreError) and not isinstance(err, OSError)
    assert logstore.NetworkFileSystemError is NetworkFileSystemError
    assert "NetworkFileSystemError" in logstore.__all__
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is NetworkFileSystemError and str(again) == message
    assert (again.path, again.fstype, again.mount_point) == (err.path, err.fstype, err.mount_point)


@pytest.mark.parametrize(
    ("fstype", "refused"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("9p", True),
        ("ceph", True),
        ("fuse.sshfs", True),
        ("fuse.rclone", True),
        ("fuse.other", False),
        ("fuse", False),
        ("fuseblk", False),
        ("gfs2", False),
        ("tmpfs", False),
        ("btrfs", False),
    ],
)
def test_network_types_are_refused_and_other_fuse_types_are_not(
    tmp_path: Path, store_dir: Path, fstype: str, refused: bool
) -> None:
    info = table(tmp_path, line(21, device(store_dir), "/mnt/x", fstype))
    assert mounts.network_filesystem(str(store_dir), info) == (fstype if refused else None)
    if refused:
        with pytest.raises(NetworkFileSystemError, match=f"\\({fstype}, mounted at /mnt/x\\)"):
            mounts.check_local(str(store_dir), info)
    else:
        mounts.check_local(str(store_dir), info)


def test_a_symbolic_link_is_followed_to_the_real_directory(tmp_path: Path, store_dir: Path) -> None:
    remote = store_dir / "remote"
    (remote / "store").mkdir(parents=True)
    link = store_dir / "link"
    link.symlink_to(remote / "store")
    info = table(
        tmp_path,
        line(20, elsewhere(store_dir, 0), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), str(remote), "cifs"),
    )
    assert mounts.network_filesystem(str(link), info) == "cifs"
    with pytest.raises(NetworkFileSystemError) as raised:
        mounts.check_local(str(link), info)
    assert raised.value.path == str(link) and raised.value.mount_point == str(remote)


def test_a_directory_not_made_yet_is_looked_up_through_its_nearest_existing_ancestor(
    tmp_path: Path, store_dir: Path
) -> None:
    new = store_dir / "not" / "yet"
    by_device = table(tmp_path, line(20, device(store_dir), "/srv/share", "nfs4"))
    assert mounts.network_filesystem(str(new), by_device) == "nfs4"
    by_prefix = table(
        tmp_path,
        line(20, elsewhere(store_dir, 0), "/", "ext4"),
        line(21, elsewhere(store_dir, 1), str(store_dir), "nfs4"),
    )
    assert mounts.network_filesystem(str(new), by_prefix) == "nfs4"
    (store_dir / "file").write_bytes(b"")  # a file in the way: its directory is where the check looks
    assert mounts.network_filesystem(str(store_dir / "file" / "below"), by_device) == "nfs4"


def test_lines_with_and_without_optional_fields_parse_and_malformed_lines_are_passed_over(tmp_path: Path) -> None:
    parsed = mounts.parse_line(b"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:2 - ext3 /dev/root rw")
    assert parsed == mounts.Mount(98, 0, "/mnt/parent", "ext3", "/dev/root")
    parsed = mounts.parse_line(b"36 35 0:53 / /mnt/n rw - nfs4 server:/export\\040x rw,vers=4.2")
    assert parsed == mounts.Mount(0, 53, "/mnt/n", "nfs4", "server:/export x")
    for bad in (
        b"",
        b"garbage",
        b"36 35 98:0 / /mnt rw",  # no separator
        b"36 35 98:0 / /mnt rw -",  # nothing after it
        b"36 35 98:0 / /mnt rw - ext4",  # no source
        b"36 35 980 / /mnt rw - ext4 /dev/x rw",  # no major:minor
        b"36 35 a:b / /mnt rw - ext4 /dev/x rw",
    ):
        assert mounts.parse_line(bad) is None, bad
    info = tmp_path / "mountinfo"
    info.write_bytes(b"garbage\n36 35 0:53 / /mnt/n rw - nfs4 s rw\n\n1 2 3\n")
    assert mounts.read_mounts(str(info)) == [mounts.Mount(0, 53, "/mnt/n", "nfs4", "s")]


def test_the_environment_variable_names_the_mount_table(
    tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = table(tmp_path, line(21, device(store_dir), "/mnt/x", "nfs"))
    local = tmp_path / "local"
    local.write_text(line(21, device(store_dir), "/", "xfs") + "\n")
    monkeypatch.setenv("LOGSTORE_MOUNTINFO", remote)
    assert mounts.mountinfo_path() == remote
    assert mounts.network_filesystem(str(store_dir)) == "nfs"
    with pytest.raises(NetworkFileSystemError):
        mounts.check_local(str(store_dir))
    assert mounts.network_filesystem(str(store_dir), str(local)) is None  # an argument wins
    monkeypatch.setenv("LOGSTORE_MOUNTINFO", os.devnull)  # lists no mounts: nothing is refused
    mounts.check_local(str(store_dir))
    monkeypatch.setenv("LOGSTORE_MOUNTINFO", "")
    assert mounts.mountinfo_path() == mounts.MOUNTINFO == "/proc/self/mountinfo"
    monkeypatch.delenv("LOGSTORE_MOUNTINFO")
    assert mounts.mountinfo_path() == mounts.MOUNTINFO


def test_this_machines_mount_table_holds_the_directory(store_dir: Path) -> None:
    """The real table, where there is one: some mount holds the directory, and the verdict follows its type."""
    found = mounts.find_mount(str(store_dir), mounts.MOUNTINFO)
    verdict = mounts.network_filesystem(str(store_dir), mounts.MOUNTINFO)
    if not os.path.exists(mounts.MOUNTINFO):
        assert found is None and verdict is None
        return
    assert found is not None and found in (mounts.read_mounts(mounts.MOUNTINFO) or [])
    real = os.path.realpath(store_dir)
    is_prefix = found.mount_point == "/" or (real + "/").startswith(found.mount_point + "/")
    assert (found.major, found.minor) == device(store_dir) or is_prefix
    assert verdict == (found.fstype if found.fstype in mounts.NETWORK_TYPES else None)
