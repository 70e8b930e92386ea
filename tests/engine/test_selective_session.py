"""Changing file priorities on a running torrent (the daemon's API), in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_transfer import make_data

from swarmhub.engine.session import Session
from swarmhub.engine.torrent import TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage.files import PARTS_DIR


async def test_a_finished_selection_wants_more_and_completes(tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [90_001, 50_003, 120_007])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    names = ["/".join(f.path) for f in meta.data_files]
    dl = tmp_path / "dl"
    async with Session(Settings(super_seeding=False), state_dir=tmp_path / "sa") as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        await seeder.add(meta, src.parent)
        t = await leecher.add(meta, dl, peers=[("127.0.0.1", port)],
                              file_priorities=[0, 1, 0])
        await asyncio.wait_for(t.complete.wait(), 30)
        assert t.state is TorrentState.FINISHED and t.error is None
        st = t.status()
        assert st.progress == 1.0 and st.wanted_bytes < meta.total_length
        assert (dl / "payload" / names[1]).read_bytes() == (src / names[1]).read_bytes()
        assert not (dl / "payload" / names[0]).exists()
        assert not (dl / "payload" / names[2]).exists()
        assert (dl / PARTS_DIR).exists()

        await t.set_file_priorities([1, 1, 1])
        assert t.status().state is TorrentState.DOWNLOADING and not t.complete.is_set()
        await asyncio.wait_for(t.complete.wait(), 30)
        assert t.status().state is TorrentState.SEEDING and t.error is None
        for name in names:
            assert (dl / "payload" / name).read_bytes() == (src / name).read_bytes()
        assert not (dl / PARTS_DIR / meta.info_hash.hex()).exists()


async def test_set_sequential_and_a_waited_range_arrive(tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [400_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=16 * 1024)
    async with Session(Settings(super_seeding=False), state_dir=tmp_path / "sa") as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        await seeder.add(meta, src.parent)
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        t.set_sequential(True)
        assert t.picker.sequential
        missing = t.prioritize_range(meta.total_length - 10, 10)
        await asyncio.wait_for(t.wait_pieces(missing), 30)
        assert t.have[meta.num_pieces - 1]
        await asyncio.wait_for(t.complete.wait(), 30)
