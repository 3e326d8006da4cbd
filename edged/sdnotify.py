"""systemd's notify protocol spoken directly over $NOTIFY_SOCKET (no libsystemd).

READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 are datagrams on a unix socket whose path
is in NOTIFY_SOCKET ("@name" is the abstract namespace). Outside systemd every call is a
no-op. The watchdog interval comes from WATCHDOG_USEC (only when WATCHDOG_PID, if set, is us).
"""

from __future__ import annotations

import os
import socket

from .logs import get_logger

log = get_logger("edged.sdnotify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self.broken = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def _target(self) -> str:
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def send(self, *lines: str) -> bool:
        if not self.address or self.broken:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._target())
            return True
        except OSError as exc:
            # One clear error, then silence: a broken socket must not become a log flood.
            self.broken = True
            log.error("notify_socket_unreachable", socket=self.address, error=exc.strerror or str(exc),
                      watchdog_s=self.watchdog_s,
                      hint="systemd's NOTIFY_SOCKET cannot be reached; with WatchdogSec set, systemd will restart edged")
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
