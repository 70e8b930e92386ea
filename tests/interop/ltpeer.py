"""Run one libtorrent peer as its own process: the reference peer for interop tests and benches.

Usage::

    python tests/interop/ltpeer.py --torrent T --save DIR --listen 127.0.0.1:PORT \
        [--seed] [--seed-mode] [--peer HOST:PORT ...] [--timeout S] [--stop-when-done] \
        [--upload-limit B/s] [--download-limit B/s] [--preset tuned|default] [--set NAME=VALUE]
        [--encryption]

Why a separate process: libtorrent runs its own threads and holds the GIL only briefly, but a
benchmark must not share a CPU budget or an interpreter with the peer it measures, and a crash in
either side must not take the other down.

Every outreach is off (DHT, LSD, UPnP, NAT-PMP, uTP); the session listens on the one loopback
address given. stdout carries one JSON object per line:

- ``{"event": "listening", "port": P}`` once the TCP listen socket is up (``--listen ...:0`` works);
- ``{"event": "ready", "state": S, "progress": p}`` once the files are checked (a seeder is then
  really able to serve: a leecher that connects earlier would be turned away);
- ``{"event": "finished", "elapsed": s}`` when every piece has passed its hash check;
- ``{"event": "hash_failed" | "peer_ban" | "peer_error" | "torrent_error" | "performance" ...}``;
- a status line every ``--interval`` seconds (default 1): ``{"t", "progress", "state", "down",
  "rate_down", "rate_up", "peers", "uploaded", "downloaded", "hash_fails", "have_bytes",
  "bitfield"}`` (``bitfield``: verified pieces, hex, wire order; the lab's full-copy trigger).

Exit codes: 0 finished with ``--stop-when-done`` (or a seeder reaching ``--timeout``), 2 torrent
error (including a ``--seed`` whose data is incomplete), 3 timeout before finishing, 130 on SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "FORCED_ENCRYPTION",
    "main",
    "session_settings",
]

_T0 = time.monotonic()  # "t" and "elapsed" count from here (the script start, after imports)

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_TIMEOUT = 3

#: How often a leecher re-dials its --peer list while it has no connection (a seeder that was
#: still checking its files refuses the first attempt; libtorrent's own retry waits minutes).
_REDIAL_S = 1.0


#: ``--encryption``: MSE/PE required both ways, RC4 only (no plaintext crypto_select).
FORCED_ENCRYPTION: dict[str, Any] = {
    "in_enc_policy": int(lt.enc_policy.pe_forced),
    "out_enc_policy": int(lt.enc_policy.pe_forced),
    "allowed_enc_level": int(lt.enc_level.pe_rc4),
    "prefer_rc4": True,
}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def session_settings(
    listen: str, preset: str = "tuned", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Settings for a loopback-only session.

    Always: no outreach at all (hard project rule), TCP only (uTP on loopback is CPU-bound and
    slower), several connections per IP (every test peer is 127.0.0.1), plaintext outgoing
    handshakes (incoming may be either), fast reconnects.

    ``preset="tuned"`` (the default) adds ``high_performance_seed()`` -- big send buffers, deep
    request queues, unlimited unchoke slots -- plus a disk queue and hashing threads sized for a
    fast transfer on two cores. ``preset="default"`` keeps libtorrent's desktop defaults (for
    A/B runs). ``overrides`` (``--set NAME=VALUE``) win over both.
    """
    host = listen.rsplit(":", 1)[0].strip("[]")
    s: dict[str, Any] = {}
    if preset == "tuned":
        s.update(lt.high_performance_seed())
        s.update(
            {
                "connections_limit": 500,
                "max_out_request_queue": 1500,
                "max_allowed_in_request_queue": 2000,
                "send_buffer_watermark": 8 * 1024 * 1024,
                "send_buffer_low_watermark": 1024 * 1024,
                "send_buffer_watermark_factor": 150,
                "max_queued_disk_bytes": 64 * 1024 * 1024,
                "max_peer_recv_buffer_size": 8 * 1024 * 1024,
                "aio_threads": 4,
                "hashing_threads": 2,
                "checking_mem_usage": 2048,
                "strict_end_game_mode": False,
                "use_parole_mode": False,
                "suggest_mode": 0,
                "allowed_fast_set_size": 0,
                "piece_extent_affinity": True,
                # The session dials queued peers and unchokes on its tick: at the default 500 ms
                # a fresh leecher idles ~0.4 s before its first byte (20-30% of a 512 MiB run).
                "tick_interval": 100,
            }
        )
    elif preset != "default":
        raise ValueError(f"unknown preset {preset!r} (tuned, default)")
    s.update(
        {
            # --- outreach: none ---
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": "",
            "listen_interfaces": listen,
            "outgoing_interfaces": host,
            "enable_ip_notifier": False,
            "announce_to_all_trackers": True,
            # --- transport: TCP only, many peers per IP, plaintext out ---
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_tcp": True,
            "enable_outgoing_tcp": True,
            "allow_multiple_connections_per_ip": True,
            "in_enc_policy": int(lt.enc_policy.pe_enabled),
            "out_enc_policy": int(lt.enc_policy.pe_disabled),
            "min_reconnect_time": 1,
            "max_failcount": 100,
            "peer_connect_timeout": 5,
            "smooth_connects": False,
            # --- alerts we read ---
            "alert_mask": (
                lt.alert.category_t.error_notification
                | lt.alert.category_t.status_notification
                | lt.alert.category_t.peer_notification
                | lt.alert.category_t.storage_notification
                | lt.alert.category_t.performance_warning
            ),
            "alert_queue_size": 10000,
        }
    )
    s.update(overrides or {})
    return s


def _parse_setting(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    elif raw.lstrip("-").isdigit():
        value = int(raw)
    return name, value


def _parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torrent", required=True, help=".torrent path or magnet: URI")
    p.add_argument("--save", required=True, type=Path, help="save path (data lives here)")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 = any)")
    p.add_argument("--seed", action="store_true", help="data is complete at --save")
    p.add_argument(
        "--seed-mode", action="store_true", help="with --seed: skip the full check (trust data)"
    )
    p.add_argument("--peer", action="append", default=[], type=_parse_endpoint)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--stop-when-done", action="store_true")
    p.add_argument("--upload-limit", type=int, default=0, help="bytes/s, 0 = unlimited")
    p.add_argument("--download-limit", type=int, default=0, help="bytes/s, 0 = unlimited")
    p.add_argument("--preset", choices=["tuned", "default"], default="tuned")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=_parse_setting,
        metavar="NAME=VALUE",
        help="override one settings_pack value (repeatable)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between status lines")
    p.add_argument(
        "--encryption",
        action="store_true",
        help="forced RC4 message stream encryption in and out (plaintext peers are refused)",
    )
    args = p.parse_args(argv)
    _parse_endpoint(args.listen)
    return args


class _Peer:
    """One session, one torrent, and the alert loop that turns both into JSON lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        overrides = dict(FORCED_ENCRYPTION) if args.encryption else {}
        overrides.update(dict(args.set))
        settings = session_settings(args.listen, args.preset, overrides)
        self.ses = lt.session(cast("lt.settings_pack", settings))
        if settings.get("enable_dht"):
            # libtorrent 2.1 starts its DHT announce timer only when this setting changes
            # while the DHT runs ("not starting DHT announce timer: m_dht == nullptr"), and
            # torrents that are not auto-managed never announce otherwise.
            self.ses.apply_settings({"dht_announce_interval": settings.get(
                "dht_announce_interval", 15 * 60)})
        # By default loopback peers sit in the "local" peer class, which no rate limit touches
        # and which ignores unchoke slots; put every address in the global class so
        # --upload/--download-limit and --set unchoke_slots_limit=N really apply.
        if args.upload_limit or args.download_limit or "unchoke_slots_limit" in overrides:
            f = lt.ip_filter()
            f.add_rule("0.0.0.0", "255.255.255.255", 1 << self.ses.global_peer_class_id)
            f.add_rule(
                "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << self.ses.global_peer_class_id
            )
            self.ses.set_peer_class_filter(f)
            self.ses.apply_settings(
                {
                    "upload_rate_limit": args.upload_limit,
                    "download_rate_limit": args.download_limit,
                }
            )
        if str(args.torrent).startswith("magnet:"):
            atp = lt.parse_magnet_uri(str(args.torrent))
        else:
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(str(args.torrent))
        atp.save_path = str(args.save)
        flags = lt.torrent_flags.default_flags
        flags &= ~lt.torrent_flags.auto_managed  # never queued, never paused by the session
        flags &= ~lt.torrent_flags.paused
        if args.seed and args.seed_mode:
            flags |= lt.torrent_flags.seed_mode
        atp.flags = flags
        self.handle = self.ses.add_torrent(atp)
        self.listening = False
        self.ready = False
        self.finished_at: float | None = None
        self.hash_fails = 0
        self.error: str | None = None
        self.last_dial = 0.0
        if str(args.torrent).startswith("magnet:"):
            # Nothing to check before the metadata arrives: dial the peers now.
            self.ready = True
            _emit({"event": "ready", "state": "downloading_metadata", "progress": 0.0})
            self._dial()

    def _dial(self) -> None:
        self.last_dial = time.monotonic()
        for ep in self.args.peer:
            self.handle.connect_peer(ep)

    def _on_alert(self, a: Any) -> None:
        if isinstance(a, lt.listen_succeeded_alert):
            if not self.listening and a.socket_type == lt.listen_succeeded_alert_socket_type_t.tcp:
                self.listening = True
                _emit({"event": "listening", "port": a.port, "address": str(a.address)})
        elif isinstance(a, lt.listen_failed_alert):
            self.error = f"listen failed: {a.message()}"
            _emit({"event": "listen_failed", "message": a.message()})
        elif isinstance(a, lt.torrent_checked_alert):
            self._on_checked()
        elif isinstance(a, lt.torrent_finished_alert):
            self._on_finished()
        elif isinstance(a, lt.hash_failed_alert):
            self.hash_fails += 1
            _emit({"event": "hash_failed", "piece": a.piece_index})
        elif isinstance(a, lt.peer_ban_alert):
            _emit({"event": "peer_ban", "peer": str(a.endpoint), "message": a.message()})
        elif isinstance(a, lt.peer_error_alert):
            _emit({"event": "peer_error", "peer": str(a.endpoint), "message": a.message()})
        elif isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
            self.error = a.message()
            _emit({"event": "torrent_error", "message": a.message()})
        elif isinstance(a, lt.performance_alert):
            _emit({"event": "performance", "message": a.message()})

    def _on_checked(self) -> None:
        if self.ready:
            return
        self.ready = True
        st = self.handle.status()
        if self.args.seed and not st.is_seeding:
            self.error = (
                f"--seed but the data at {self.args.save} is incomplete ({st.progress:.4f})"
            )
            _emit({"event": "torrent_error", "message": self.error})
            return
        _emit({"event": "ready", "state": str(st.state), "progress": st.progress})
        if st.is_seeding:
            self._on_finished()
        self._dial()

    def _on_finished(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.monotonic()
            _emit({"event": "finished", "elapsed": round(self.finished_at - _T0, 4)})

    def _status(self) -> None:
        st = self.handle.status()  # every query flag: accurate counters and the pieces
        bits = "".join("1" if have else "0" for have in st.pieces)
        bits += "0" * (-len(bits) % 8)
        _emit(
            {
                "t": round(time.monotonic() - _T0, 3),
                "progress": st.progress,
                "state": str(st.state),
                "down": st.total_done,
                "rate_down": st.download_payload_rate,
                "rate_up": st.upload_payload_rate,
                "peers": st.num_peers,
                "uploaded": st.total_payload_upload,
                "downloaded": st.total_payload_download,
                "hash_fails": self.hash_fails,
                "have_bytes": st.total_wanted_done,
                "bitfield": int(bits, 2).to_bytes(len(bits) // 8, "big").hex() if bits else "",
            }
        )

    def run(self) -> int:
        """Pump alerts until done, error or timeout; return the exit code."""
        deadline = _T0 + self.args.timeout
        next_status = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_status:
                self._status()
                next_status = now + self.args.interval
            if self.error is not None:
                return EXIT_ERROR
            if self.finished_at is not None and self.args.stop_when_done:
                self._status()
                return EXIT_OK
            if now >= deadline:
                _emit({"event": "timeout", "elapsed": round(now - _T0, 3)})
                return EXIT_OK if self.finished_at is not None else EXIT_TIMEOUT
            if (
                self.ready
                and self.finished_at is None
                and self.args.peer
                and now - self.last_dial >= _REDIAL_S
                and self.handle.status().num_peers == 0
            ):
                self._dial()
            wait_s = max(0.0, min(next_status, deadline) - time.monotonic())
            self.ses.wait_for_alert(int(min(wait_s, 0.2) * 1000) + 1)
            for a in self.ses.pop_alerts():
                self._on_alert(a)

    def close(self) -> None:
        """Pause, then drop the session; its destructor waits for queued disk writes."""
        self.ses.pause()
        del self.handle
        del self.ses


def _wait_gate(timeout: float) -> None:
    """In a gated lab run (``SWARMHUB_LAB_GATE``, see ``swarmhub.lab.gate``): say so, wait until
    the runner creates the gate file, and count "t" and "elapsed" from then, as our peers do."""
    global _T0
    gate = os.environ.get("SWARMHUB_LAB_GATE")
    if not gate:
        return
    _emit({"event": "gate"})
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    _T0 = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    _wait_gate(args.timeout or 600.0)
    peer = _Peer(args)
    try:
        return peer.run()
    except KeyboardInterrupt:
        return 130
    finally:
        peer.close()


if __name__ == "__main__":
    sys.exit(main())
