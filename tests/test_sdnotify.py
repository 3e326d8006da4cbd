"""systemd notify protocol: the daemon under a NOTIFY_SOCKET that the test listens on."""

from __future__ import annotations

import signal
import socket
import threading

from conftest import free_port, wait_for


class NotifyListener:
    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.datagrams: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for d in list(self.datagrams) for line in d.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_ready_without_broker_watchdog_and_stopping(tmp_path, daemon_factory):
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        dead_port = free_port()  # nothing listens here: READY must not wait for the broker
        d = daemon_factory(dead_port, env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "900000"})
        wait_for(lambda: "READY=1" in listener.lines(), 15, what="READY=1")
        status = next(line for line in listener.lines() if line.startswith("STATUS="))
        assert "broker not connected" in status
        wait_for(lambda: listener.lines().count("WATCHDOG=1") >= 3, 10, what="periodic WATCHDOG=1 with no readings")
        assert d.stop(signal.SIGTERM) == 0
        assert "STOPPING=1" in listener.lines()
    finally:
        listener.close()


def test_unreachable_notify_socket_is_one_clear_error(tmp_path, broker, daemon_factory):
    d = daemon_factory(broker.port, env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "600000"})
    event = d.wait_log("notify_socket_unreachable", timeout=15)
    assert "NOTIFY_SOCKET" in event["hint"]
    d.wait_log("mqtt_connected", timeout=10)
    assert sum(e.get("event") == "notify_socket_unreachable" for e in d.log_lines()) == 1
    assert d.stop() == 0
