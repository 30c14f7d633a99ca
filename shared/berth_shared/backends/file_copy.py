"""Writing the file backend's files safely: private, durable, and thin (pure file I/O).

A copy keeps holes: a reflink (copy-on-write clone) where the file system offers one, else
only the data extents. Files are fsync'd before the caller renames them into place, and a
directory is fsync'd after a rename, so a crash leaves a complete file or none.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path) -> int:
    """Open `path` empty, write-only and 0600: it holds a tenant's data.

    O_CREAT's mode does not apply to a file that already exists (a crash's leftover
    `.partial`), hence the explicit fchmod.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sparse_copy(src: Path, dst: Path, *, reflink: bool = True) -> bool:
    """Copy `src` to `dst` keeping holes; return True when it was a reflink.

    With `reflink` (the default) the file system is first asked for a copy-on-write clone
    (FICLONE: btrfs, XFS, bcachefs...); where it cannot, only the data extents are copied
    (SEEK_DATA/SEEK_HOLE + copy_file_range), so a thin file stays thin. `dst` is
    truncated first and fsync'd before returning, so the caller can rename it into place.
    """
    with open(src, "rb") as fin, os.fdopen(open_private(dst), "wb") as fout:
        src_fd, dst_fd = fin.fileno(), fout.fileno()
        cloned = reflink and _try_reflink(src_fd, dst_fd)
        if not cloned:
            _copy_data_extents(src_fd, dst_fd)
        os.fsync(dst_fd)
    return cloned


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    """FICLONE `src_fd` into `dst_fd`; False when the file system cannot share extents."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
            raise
        return False
    return True


def _copy_data_extents(src_fd: int, dst_fd: int) -> None:
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            copied = os.copy_file_range(src_fd, dst_fd, hole - pos, pos, pos)
            if copied == 0:
                break
            pos += copied
        offset = hole
    os.ftruncate(dst_fd, size)
