"""The queue stays off network filesystems: the mount table decides, and start-up says why it refuses."""

from __future__ import annotations

import pytest

from comfy import Studio
from comfy.errors import ConfigError
from comfy.storage import mounts
from comfy.storage.mounts import filesystem_of, refuse_network_queue
from tests.conftest import make_settings

TABLE = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 21 0:22 / /tmp rw shared:5 - tmpfs tmpfs rw
30 21 0:40 / /mnt/nas rw shared:9 - nfs4 nas:/export rw,vers=4.2
31 21 0:41 / /mnt/share rw shared:10 - cifs //srv/share rw
32 21 0:42 / /data rw shared:11 - fuse.hf-mount hf-mount rw,user_id=1000
33 21 0:43 / /mnt/bucket rw shared:12 - fuse.s3fs s3fs rw
34 21 0:44 / /mnt/gcs rw shared:13 - fuse.gcsfuse my-bucket rw
35 21 0:45 / /mnt/host rw shared:14 - 9p hostshare rw
36 21 0:46 / /mnt/with\\040space rw shared:15 - smb3 //srv/x rw
37 32 8:2 / /data/local rw shared:16 - ext4 /dev/sdb1 rw
38 21 0:47 / /mnt/ntfs rw shared:17 - fuseblk /dev/sdc1 rw
"""


@pytest.mark.parametrize("folder", ["/mnt/nas/studio/queue", "/mnt/share/q", "/data/queue", "/mnt/bucket/queue",
                                    "/mnt/gcs/q", "/mnt/host/q", "/mnt/with space/q"])
def test_a_queue_on_a_network_filesystem_is_refused_with_a_sentence(folder: str) -> None:
    with pytest.raises(ConfigError) as info:
        refuse_network_queue(folder, TABLE)
    message = str(info.value)
    assert folder in message and "local disk" in message and "STUDIO_DATA_DIR" in message


@pytest.mark.parametrize(("folder", "expected"), [("/home/me/studio/queue", ("ext4", "/")),
                                                  ("/tmp/q", ("tmpfs", "/tmp")),
                                                  ("/data/local/queue", ("ext4", "/data/local")),
                                                  ("/tmpx/q", ("ext4", "/")),
                                                  ("/mnt/ntfs/q", ("fuseblk", "/mnt/ntfs"))])
def test_a_local_queue_is_accepted(folder: str, expected) -> None:
    assert filesystem_of(folder, TABLE) == expected
    refuse_network_queue(folder, TABLE)


def test_the_studio_refuses_to_start_on_a_network_queue(tmp_path, monkeypatch) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(TABLE + f"40 21 0:50 / {tmp_path / 'mnt'} rw shared:20 - fuse.gcsfuse b rw\n")
    monkeypatch.setattr(mounts, "MOUNTINFO", table)
    settings = make_settings(tmp_path / "mnt", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="fuse.gcsfuse"):
        Studio(settings)
    Studio(make_settings(tmp_path / "disk", "http://127.0.0.1:9")).store.queue.close()  # ext4 at /: fine
