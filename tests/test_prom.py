"""Prometheus endpoint: a real HTTP scrape of edged.prom's server, parsed as exposition text.

The collector reads the stats payload dict at scrape time, so every number checked here is
compared with the dict it came from (synthetic, and one built by a real SensorPipeline).
"""

from __future__ import annotations

import math
import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edged import __version__  # noqa: E402
from edged.config import Settings  # noqa: E402
from edged.detector import make_detector  # noqa: E402
from edged.messages import RawMessage, Topics  # noqa: E402
from edged.pipeline import SensorPipeline  # noqa: E402
from edged.prom import start_server  # noqa: E402
from edged.stats import Stats  # noqa: E402


def scrape(server) -> tuple[str, dict[str, dict[tuple, float]], dict[str, str]]:
    """(text, {sample name: {sorted label items: value}}, {family name: type})."""
    with urllib.request.urlopen(server.url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return text, samples, types


def value(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def serve():
    servers = []

    def start(stats_fn, host="127.0.0.1"):
        s = start_server(host, 0, stats_fn)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


PAYLOAD = {
    "ts": 1700000000.0,
    "uptime_s": 12.5,
    "metrics": 3,
    "status": {"learning": 1, "ok": 1, "anomalous": 1},
    "open_episodes": 1,
    "queue_depth": 7,
    "detector": "zscore",
    "memory_state_bytes": 4096,
    "readings": 120,
    "dropped": 4,
    "scored": 110,
    "duplicates": 2,
    "events_start": 3,
    "events_end": 2,
    "events_summary": 1,
    "events_muted": 5,
    "requests": 9,
    "requests_failed": 1,
    "route_local": 6,
    "route_cloud": 2,
    "route_local_fallback": 1,
    "cloud_tokens": 345,
    "cloud_failed_timeout": 1,
    "llm_generations": 4,
    "llm_tokens": 80,
    "llm_guard_rejections": 1,
    "llm_tokens_per_s": 21.5,
    "rejected": {"invalid_json": 5, "ts_in_future": 2, "no_value": 1},
    "rejected_total": 8,
    "ingest_latency": {"p50_ms": 1.5, "p99_ms": 9.0},
    "detector_latency": {
        "p50_ms": 0.2, "p99_ms": 0.9, "count": 110, "sum_ms": 33.0,
        "buckets_ms": {"0.1": 10, "0.5": 90, "1": 108, "5": 110, "+Inf": 110},
    },
    "connected": True,
    "connects": 2,
    "commands_queue_depth": 1,
    "spool_depth": 0,
    "cloud": {
        "enabled": True, "configured": True, "calls": 3, "requests": 4, "ok": 2,
        "failures": {"timeout": 1, "http_5xx": 1}, "failures_total": 2, "retries": 1,
        "tokens_in": 200, "tokens_out": 145, "breaker": "closed", "breaker_opened": 0,
        "consecutive_failures": 0, "budget": {"requests": 3}, "last_latency_ms": 812.0,
    },
}


def test_scrape_follows_the_stats_dict(serve):
    server = serve(lambda: PAYLOAD)
    assert server.httpd.server_address[0] == "127.0.0.1"
    text, s, types = scrape(server)

    assert value(s, "edged_stats_up") == 1
    assert value(s, "edged_info", version=__version__, detector="zscore") == 1
    # counters, with the _total suffix and counter type
    assert value(s, "edged_readings_total") == 120 and types["edged_readings"] == "counter"
    assert value(s, "edged_dropped_total") == 4
    assert value(s, "edged_scored_total") == 110  # a counter with no mapping of its own
    assert value(s, "edged_requests_total") == 9
    # rejected by reason: one labelled sample per reason, nothing else
    assert s["edged_rejected_total"] == {(("reason", r),): float(n) for r, n in PAYLOAD["rejected"].items()}
    assert types["edged_rejected"] == "counter"
    assert "edged_rejected_total_total" not in text
    # labelled families
    assert s["edged_events_total"] == {(("event", "start"),): 3, (("event", "end"),): 2, (("event", "summary"),): 1}
    assert value(s, "edged_events_muted_total") == 5
    assert s["edged_requests_by_route_total"] == {
        (("route", "local"),): 6, (("route", "cloud"),): 2, (("route", "local_fallback"),): 1}
    assert value(s, "edged_ask_cloud_fallbacks_total", reason="timeout") == 1
    assert value(s, "edged_ask_cloud_tokens_total") == 345
    # gauges
    assert value(s, "edged_queue_depth", lane="sensor") == 7 and types["edged_queue_depth"] == "gauge"
    assert value(s, "edged_queue_depth", lane="command") == 1
    assert value(s, "edged_open_episodes") == 1
    assert value(s, "edged_metrics") == 3
    assert s["edged_metrics_by_status"] == {(("status", k),): float(v) for k, v in PAYLOAD["status"].items()}
    assert value(s, "edged_uptime_seconds") == 12.5
    assert value(s, "edged_state_memory_bytes") == 4096
    assert value(s, "edged_mqtt_connected") == 1
    assert value(s, "edged_mqtt_connects_total") == 2
    assert value(s, "edged_spool_depth") == 0
    # latency: quantiles of recent samples, and the cumulative histogram when the dict has one
    assert value(s, "edged_ingest_latency_quantile_seconds", quantile="0.5") == pytest.approx(0.0015)
    assert value(s, "edged_ingest_latency_quantile_seconds", quantile="0.99") == pytest.approx(0.009)
    assert "edged_ingest_latency_seconds_bucket" not in s  # no buckets in that entry
    assert types["edged_detector_latency_seconds"] == "histogram"
    buckets = {dict(k)["le"]: v for k, v in s["edged_detector_latency_seconds_bucket"].items()}
    assert buckets == {"0.0001": 10, "0.0005": 90, "0.001": 108, "0.005": 110, "+Inf": 110}
    assert value(s, "edged_detector_latency_seconds_count") == 110
    assert value(s, "edged_detector_latency_seconds_sum") == pytest.approx(0.033)
    # cloud client counters
    assert s["edged_cloud_tokens_total"] == {(("direction", "in"),): 200, (("direction", "out"),): 145}
    assert s["edged_cloud_errors_total"] == {(("reason", "timeout"),): 1, (("reason", "http_5xx"),): 1}
    assert value(s, "edged_cloud_requests_total") == 4
    assert value(s, "edged_cloud_breaker_open") == 0
    assert value(s, "edged_cloud_last_latency_seconds") == pytest.approx(0.812)
    # the local LM
    assert value(s, "edged_llm_tokens_per_second") == 21.5 and types["edged_llm_tokens_per_second"] == "gauge"
    assert value(s, "edged_llm_tokens_total") == 80
    assert value(s, "edged_llm_generations_total") == 4
    assert value(s, "edged_llm_guard_rejections_total") == 1
    # a private registry: none of the test runner's process or GC metrics
    assert not [n for n in s if n.startswith(("process_", "python_"))]
    assert all(n.startswith("edged_") for n in s)
    # strings and timestamps are not metrics
    assert "edged_ts" not in text and "edged_detector_total" not in text


def test_values_are_read_at_scrape_time_and_none_is_absent(serve):
    payload = {"readings": 1, "rejected": {}, "llm_tokens_per_s": None,
               "detector_latency": {"p50_ms": None, "p99_ms": None}}
    server = serve(lambda: payload)
    _, s, _ = scrape(server)
    assert value(s, "edged_readings_total") == 1
    assert "edged_llm_tokens_per_second" not in s
    assert "edged_rejected_total" not in s  # no reasons yet: a family without samples
    payload["readings"] = 5
    payload["rejected"] = {"too_large": 3}
    _, s, _ = scrape(server)
    assert value(s, "edged_readings_total") == 5
    assert value(s, "edged_rejected_total", reason="too_large") == 3


def test_a_failing_stats_function_still_answers(serve):
    def broken():
        raise RuntimeError("boom")

    _, s, _ = scrape(serve(broken))
    assert s == {"edged_stats_up": {(): 0.0}}


def test_real_pipeline_stats_payload(serve):
    """The dict a real SensorPipeline publishes on the stats topic, scraped."""
    settings = Settings.model_validate({"node": {"id": "prom", "clock": "data"},
                                        "anomaly": {"window": 16, "learning_readings": 8}})
    topics = Topics("edged", "prom")
    sent: list[tuple] = []
    stats = Stats()
    pipeline = SensorPipeline(settings, topics, make_detector("zscore", 16, 8), lambda *a, **k: sent.append(a) or True,
                              stats)
    pipeline.stats_extra = lambda: {"connected": True, "connects": 1, "commands_queue_depth": 0, "spool_depth": 0}
    t0 = 1_700_000_000
    good = [RawMessage(f"sensors/room{i % 2}/temp", f'{{"value": {20 + i % 3}, "ts": {t0 + i}}}'.encode(), t0 + i)
            for i in range(20)]
    bad = [RawMessage("sensors/room0/temp", b"{not json", t0), RawMessage("sensors/room1/temp", b'"hello"', t0),
           RawMessage("sensors/room1/temp", b"{not json either", t0)]
    pipeline.process(good + bad)

    server = serve(pipeline.stats_payload)
    _, s, _ = scrape(server)
    payload = pipeline.stats_payload()
    assert payload["readings"] == 20
    assert value(s, "edged_readings_total") == payload["readings"]
    assert {dict(k)["reason"]: v for k, v in s["edged_rejected_total"].items()} == payload["rejected"]
    assert sum(s["edged_rejected_total"].values()) == payload["rejected_total"] == 3
    assert value(s, "edged_metrics") == payload["metrics"] == 2
    assert value(s, "edged_queue_depth", lane="sensor") == payload["queue_depth"]
    assert value(s, "edged_open_episodes") == payload["open_episodes"]
    for status, n in payload["status"].items():
        assert value(s, "edged_metrics_by_status", status=status) == n
    p50 = payload["detector_latency"]["p50_ms"]
    assert value(s, "edged_detector_latency_quantile_seconds", quantile="0.5") == pytest.approx(p50 / 1000)
    for key, n in payload.items():  # every plain counter of Stats is there, under its own name
        if key in stats.counters and not key.startswith(("events_", "route_", "cloud_failed_")):
            assert value(s, f"edged_{key}_total") == n, key

    # A second batch: the next scrape sees it with no bookkeeping in between.
    pipeline.process([RawMessage("sensors/room0/temp", f'{{"value": 21, "ts": {t0 + 100}}}'.encode(), t0 + 100)])
    _, s, _ = scrape(server)
    assert value(s, "edged_readings_total") == 21


def test_histogram_buckets_must_be_cumulative_order_independent(serve):
    payload = {"detector_latency": {"count": 3, "sum_ms": 3.0, "buckets_ms": {"+Inf": 3, "2": 3, "1": 2}}}
    _, s, types = scrape(serve(lambda: payload))
    buckets = [(dict(k)["le"], v) for k, v in s["edged_detector_latency_seconds_bucket"].items()]
    assert [le for le, _ in buckets] == ["0.001", "0.002", "+Inf"]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert not math.isnan(value(s, "edged_detector_latency_seconds_sum"))


def test_bind_failure_raises_oserror(serve):
    first = serve(lambda: {})
    with pytest.raises(OSError):
        start_server("127.0.0.1", first.port, lambda: {})


# --------------------------------------------------------------------------- the daemon (once wired)

WIRED = "metrics" in Settings.model_fields


@pytest.mark.skipif(not WIRED, reason="[metrics] is not wired into config.py/app.py yet")
def test_daemon_serves_its_stats(broker, daemon_factory, probe_factory):
    import uuid

    from conftest import free_port, start_node, wait_for

    port = free_port()
    sensors = f"s{uuid.uuid4().hex[:8]}"
    d, probe = start_node(daemon_factory, probe_factory, broker.port,
                          f'[sensors]\ntopics = ["{sensors}/#"]\n[metrics]\nprometheus = true\nport = {port}\n')
    listening = d.wait_log("prometheus_listening")
    assert listening["url"] == f"http://127.0.0.1:{port}/metrics"
    for i in range(5):
        probe.publish(f"{sensors}/room/temp", str(20 + i))
    probe.publish(f"{sensors}/room/temp", "{broken")

    class Server:
        url = listening["url"]

    def scraped():
        _, s, _ = scrape(Server)
        ok = s.get("edged_readings_total", {}).get((), 0) >= 5 and ("edged_rejected_total" in s)
        return s if ok else None

    s = wait_for(scraped, 15, what="readings and a rejection in the scrape")
    assert value(s, "edged_rejected_total", reason="invalid_json") >= 1
    assert value(s, "edged_mqtt_connected") == 1
    assert value(s, "edged_metrics") >= 1
    assert d.stop() == 0


def test_wal_counters_are_counters(serve):
    """Strict durability's counters: totals, `wal_bytes` included despite its _bytes suffix."""
    _, s, types = scrape(serve(lambda: {"ts": 1.0, "wal_records": 50, "wal_fsyncs": 4, "wal_bytes": 3000,
                                        "wal_replayed": 7}))
    assert value(s, "edged_wal_records_total") == 50 and value(s, "edged_wal_fsyncs_total") == 4
    assert value(s, "edged_wal_bytes_total") == 3000 and value(s, "edged_wal_replayed_total") == 7
    assert types["edged_wal_bytes"] == "counter"
