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


def test_watchdog_pings_stop_while_a_lane_is_stalled(tmp_path, broker, daemon_factory, probe_factory):
    """A command lane blocked beyond its deadline (a cloud call held open by the server)
    stops the pings; they resume when the lane moves again."""
    import json

    from fake_openai import FakeOpenAI, hold

    fake = FakeOpenAI().start()
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        d = daemon_factory(
            broker.port,
            extra=f'[cloud]\nenabled = true\nbase_url = "{fake.base_url}"\nmax_retries = 0\ntimeout_s = 30\n',
            env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "600000", "EDGED_CLOUD__API_KEY": "sk-" + "x" * 20,
                 "EDGED_NODE__COMMAND_LANE_DEADLINE_S": "1"},
        )
        wait_for(lambda: listener.lines().count("WATCHDOG=1") >= 2, 15, what="pings before the stall")
        fake.push(hold())
        probe = probe_factory(broker.port)
        probe.subscribe(f"{d.root}/response/#")
        probe.publish(f"{d.root}/request/ask",
                      json.dumps({"question": "write a short note to my landlord about the leak", "deadline_s": 8}))
        d.wait_log("lane_stalled", timeout=15)
        stalled_at = listener.lines().count("WATCHDOG=1")
        reply = probe.wait_topic(f"{d.root}/response/ask", timeout=20).json()  # the deadline ends the wait
        assert reply["data"]["source"] == "local-fallback"
        assert listener.lines().count("WATCHDOG=1") <= stalled_at + 1  # no pings while stalled
        wait_for(lambda: listener.lines().count("WATCHDOG=1") >= stalled_at + 3, 15, what="pings resumed")
        assert d.stop() == 0
    finally:
        fake.release()
        fake.stop()
        listener.close()
