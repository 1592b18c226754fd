"""A disk that stalls: with sync = "full", posts wait for it and everything else goes on;
with sync = "normal" (where commits run on the event loop: chatd/store/writer.py) the
server waits with the disk, then carries on, and nothing is lost.

The database lives on a small ext4 file system of its own (a loop device), which the test
freezes with fsfreeze while a post is on its way to the disk, as a stalled or frozen disk
would hold it. This needs root and loop devices; where the machine has neither, the test
is skipped and says why.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout

from conftest import PASSWORD, Server, run_cli


@pytest.fixture
def own_disk(tmp_path: Path) -> Iterator[Path]:
    """A mounted 64 MB ext4 file system; unmounted (and thawed) after the test."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    if not all(shutil.which(tool) for tool in ("mkfs.ext4", "mount", "fsfreeze", "umount")):
        pytest.skip("needs mkfs.ext4, mount and fsfreeze (util-linux, e2fsprogs)")
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop file system here (needs root and loop devices): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def alice(db: Path) -> dict[str, str]:
    assert run_cli("adduser", "alice", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    return {"Authorization": f"Bearer {run_cli('token', 'alice', db=db).stdout.strip()}"}


async def test_with_sync_full_a_frozen_disk_holds_posts_and_nothing_else(own_disk: Path, server_factory) -> None:
    db = own_disk / "chatd.db"
    headers = alice(db)
    server: Server = server_factory(db=db, env={"CHATD_SYNC": "full"}).start()
    url = f"{server.url}/api/v1/rooms/general/messages"
    async with ClientSession(timeout=ClientTimeout(total=120)) as session:
        assert (await session.post(url, json={"body": "before"}, headers=headers)).status == 201
        watcher = await session.ws_connect(f"{server.url}/api/v1/stream", headers=headers)
        subprocess.run(["fsfreeze", "-f", str(own_disk)], check=True)
        try:
            post = asyncio.create_task(session.post(url, json={"body": "while frozen"}, headers=headers))
            # The post reaches the writer and waits there for the disk (a wait, not a timing check).
            while "chatd_messages_waiting 1" not in await (await session.get(f"{server.url}/metrics")).text():
                assert not post.done()
                await asyncio.sleep(0.05)
            # Meanwhile reads, health, history and sockets are served.
            assert (await session.get(f"{server.url}/healthz")).status == 200
            history = await (await session.get(url, headers=headers)).json()
            assert [m["body"] for m in history["messages"]] == ["before"]
            await watcher.send_json({"type": "typing", "room": "nowhere"})
            assert (await watcher.receive_json(timeout=60))["type"] == "error"
            assert not post.done()
        finally:
            subprocess.run(["fsfreeze", "-u", str(own_disk)], check=True)
        resp = await post
        assert resp.status == 201
        event = await watcher.receive_json(timeout=60)
        assert event["type"] == "message" and event["message"]["body"] == "while frozen"
        await watcher.close()
    assert server.terminate() == 0


async def test_with_sync_normal_a_frozen_disk_loses_nothing(own_disk: Path, server_factory) -> None:
    db = own_disk / "chatd.db"
    headers = alice(db)
    server: Server = server_factory(db=db).start()
    url = f"{server.url}/api/v1/rooms/general/messages"
    async with ClientSession(timeout=ClientTimeout(total=120)) as session:
        assert (await session.post(url, json={"body": "before"}, headers=headers)).status == 201
        subprocess.run(["fsfreeze", "-f", str(own_disk)], check=True)
        try:
            post = asyncio.create_task(session.post(url, json={"body": "while frozen"}, headers=headers))
            await asyncio.sleep(0.5)  # let the post reach the disk (no assertion on time)
        finally:
            subprocess.run(["fsfreeze", "-u", str(own_disk)], check=True)
        assert (await post).status == 201
        assert (await session.get(f"{server.url}/healthz")).status == 200
        history = await (await session.get(url, headers=headers)).json()
        assert [m["body"] for m in history["messages"]] == ["before", "while frozen"]
    assert server.terminate() == 0
