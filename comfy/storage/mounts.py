"""Which filesystem a folder is on, from the kernel's mount table, to keep the queue off network filesystems.

The queue is SQLite in WAL mode, which needs shared memory and POSIX locks that NFS, SMB and FUSE mounts
(s3fs, gcsfuse, Hugging Face bucket mounts) do not give reliably: two processes there can corrupt it. So
the queue must be on a local disk; outputs may live on such a mount (``STUDIO_OUTPUTS_DIR``) or in S3.
"""

from __future__ import annotations

import os
from pathlib import Path

from comfy.errors import ConfigError

__all__ = ["NETWORK_FILESYSTEMS", "filesystem_of", "refuse_network_queue"]

MOUNTINFO = Path("/proc/self/mountinfo")
#: Filesystem types that are not a local disk (any ``fuse.*`` type counts as well).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "davfs", "sshfs", "fuse", "ncpfs", "coda", "ocfs2", "gfs2",
})
#: FUSE filesystems that are a local disk after all (NTFS via ntfs-3g, rootless containers' overlay).
LOCAL_FUSE = frozenset({"fuseblk", "fuse.fuse-overlayfs", "fuse.lxcfs"})


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_of(path: str | Path, mountinfo: str | None = None) -> tuple[str, str] | None:
    """(filesystem type, mount point) of the mount holding ``path``; None when the table cannot be read.

    ``mountinfo`` is the text of ``/proc/self/mountinfo`` (read from the kernel when None).

    >>> table = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\\n"
    ...          "40 22 0:50 / /data rw - fuse.hf-mount hf rw\\n")
    >>> filesystem_of("/data/queue", table), filesystem_of("/home/me", table)
    (('fuse.hf-mount', '/data'), ('ext4', '/'))
    """
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    target = os.path.abspath(path)
    best: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = _unescape(fields[4])
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= len(best[1])):
            best = (fs_type, mount_point)  # the longest (and, for equal ones, the last) mount wins
    return best


def refuse_network_queue(queue_dir: str | Path, mountinfo: str | None = None) -> None:
    """Raise :class:`ConfigError` with a sentence when ``queue_dir`` is on a network or FUSE filesystem."""
    found = filesystem_of(queue_dir, mountinfo)
    if found is None:
        return
    fs_type, mount_point = found
    if fs_type not in LOCAL_FUSE and (fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse.")):
        raise ConfigError(
            f"The job queue folder {queue_dir} is on a {fs_type} filesystem (mounted at {mount_point}). The "
            "queue is an SQLite database, which a network or FUSE filesystem can corrupt: set STUDIO_DATA_DIR "
            "to a folder on a local disk, and put the images on the mount with STUDIO_OUTPUTS_DIR or in S3.")
