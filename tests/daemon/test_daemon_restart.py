"""Ten torrents in one daemon survive a kill -9 mid-transfer: restarted, all finish."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemonproc import start_daemon, wait_for

from interop.harness import make_test_data
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

N = 10
SIZE = 1_200_000


def make_torrents(base: Path, n: int, size: int, seed: int) -> list[tuple[Path, Path]]:
    """``n`` single-file torrents (v1, 32 KiB pieces: progress moves in small steps):
    (data file, .torrent) pairs; the data lies in ``base/data``."""
    out = []
    for i in range(n):
        data = make_test_data(base / "data", [size + i * 4099], seed=seed + i, name=f"f{i:02d}.bin")
        meta = create_torrent(data, version=TorrentVersion.V1, piece_length=32 * 1024)
        path = base / "torrents" / f"f{i:02d}.torrent"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(torrent_bytes(meta))
        out.append((data, path))
    return out


@pytest.mark.slow
def test_ten_torrents_finish_after_kill_9_mid_transfer(tmp_path: Path) -> None:
    pairs = make_torrents(tmp_path, N, SIZE, seed=900)
    total = sum(d.stat().st_size for d, _ in pairs)
    # The seeder is a daemon too, holding the data, with an upload limit so the
    # leecher is still transferring when it is killed.
    seeder = start_daemon(tmp_path / "seed-state", tmp_path, "seeder", "--upload-limit", "1500",
                          "--max-active-downloads", "0")
    leecher = None
    try:
        for _, torrent in pairs:
            seeder.add(torrent, [], save_path=str(tmp_path / "data"))
        wait_for(lambda: all(t["state"] == "seeding" for t in seeder.torrents().values())
                 and len(seeder.torrents()) == N, 60, "the seeder to check its data")
        peer = f"127.0.0.1:{seeder.peer_port()}"
        dl = tmp_path / "downloads"
        leecher = start_daemon(tmp_path / "state", tmp_path, "leecher",
                               "--download-dir", str(dl), "--max-active-downloads", "0")
        ids = [leecher.add(torrent, [peer])["id"] for _, torrent in pairs]
        # What the user set survives the kill too: a pause and a per-torrent limit.
        leecher.ok("POST", f"/api/torrents/{ids[9]}/pause")
        leecher.ok("PUT", f"/api/torrents/{ids[8]}/limits", {"upload_limit": 12345})

        def have() -> int:
            return sum(t["have_bytes"] for t in leecher.torrents().values())

        def past_30_percent() -> int:
            h = have()
            return h if h > 0.3 * total else 0

        total -= pairs[9][0].stat().st_size  # the paused one stays at 0 until resumed

        at_kill = wait_for(past_30_percent, 120, "30% of the bytes")
        leecher.kill9()
        on_disk = sum(p.stat().st_size for p in dl.glob("*.bin"))
        assert on_disk > 0
        leecher = start_daemon(tmp_path / "state", tmp_path, "leecher2",
                               "--download-dir", str(dl), "--max-active-downloads", "0",
                               port=leecher.port)
        after = leecher.torrents()
        assert sorted(after) == sorted(ids), "every torrent is restored from the state folder"
        assert after[ids[9]]["state"] == "paused" and after[ids[8]]["upload_limit"] == 12345
        assert [after[i]["queue_position"] for i in ids] == sorted(
            after[i]["queue_position"] for i in ids), "the queue order is kept"
        leecher.ok("POST", f"/api/torrents/{ids[9]}/resume")
        assert at_kill < total, "the kill came mid-transfer"
        wait_for(lambda: all(t["complete"] and t["state"] == "seeding"
                             for t in leecher.torrents().values()), 180, "all ten to finish")
        # Verified pieces survived the kill: the second run fetched only the rest.
        again = sum(t["downloaded"] for i, t in leecher.torrents().items() if i != ids[9])
        assert again < total - 0.25 * total, (again, total)
        for data, _ in pairs:
            got = dl / data.name
            assert got.read_bytes() == data.read_bytes(), f"{data.name} differs"
    finally:
        if leecher is not None:
            leecher.proc.stop()
        seeder.proc.stop()
