"""Editing the TOML file in place: ``edged config init`` and ``edged config set``.

tomlkit keeps the user's comments, order and layout; a change is validated against the
full Settings model before anything is written, and written atomically (temp file +
rename), so a failed ``set`` leaves the file exactly as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError

from .config import ConfigError, Settings, format_validation_error, split_key

DEFAULT_TOML = """\
# edged configuration. Every key is optional; the values shown are the defaults.
# Environment variables override the file: EDGED_<SECTION>__<KEY>, e.g. EDGED_MQTT__PORT=1884.
# Secrets (mqtt.password, cloud.api_key, mqtt.request_secret) belong in the environment, a *_file,
# or $CREDENTIALS_DIRECTORY/mqtt_password, /cloud_api_key, /request_secret (systemd LoadCredential=).

[node]
id = ""                      # the <node> in every topic; empty: the hostname
state_dir = "/var/lib/edged" # snapshots, spool, built models
stats_interval_s = 30        # how often the retained edged/<node>/stats is published
clock = "wall"               # "wall", or "data": now = newest reading timestamp (replays, tests)
sensor_lane_deadline_s = 30  # a lane that has not moved for this long is stalled: watchdog pings stop
command_lane_deadline_s = 150  # one request may take its whole deadline (at most 120 s)

[mqtt]
host = "localhost"
port = 1883
protocol = "v5"              # or "v311"
client_id = ""               # empty: edged-<node id>; stable, so the broker keeps the session
username = ""
password_file = ""           # or EDGED_MQTT__PASSWORD, or the mqtt_password credential
tls = false
ca_file = ""                 # empty with tls = true: the system CA store
cert_file = ""               # client certificate (optional)
key_file = ""
base_topic = "edged"
keepalive_s = 30
reconnect_max_s = 5          # cap of the exponential reconnect backoff
qos = 1                      # subscription and publish QoS (0 or 1)
session_expiry_s = 3600      # MQTT v5: how long the broker keeps the session while edged is away
max_queued_messages = 10000  # outbound messages held while disconnected
max_inflight_messages = 1000 # QoS 1 publishes awaiting PUBACK; paho's default of 20 throttles state publishes
request_secret_file = ""     # shared secret: requests must then be signed (HMAC, docs/SECURITY.md);
                             # or EDGED_MQTT__REQUEST_SECRET, or the request_secret credential
request_window_s = 60        # a signed request's timestamp must be this close to the local clock

[sensors]
topics = ["sensors/#"]       # metric name = topic minus the filter's literal prefix
exclude = ["*/linkquality", "*/battery"]  # glob patterns on metric names
max_metrics = 2000           # beyond it new metrics are refused and reported, never evicted
max_payload_bytes = 65536
max_json_depth = 8
future_tolerance_s = 300     # readings stamped further ahead of the local clock are rejected
queue_size = 20000           # inbound queue; when full the oldest message is dropped (counted)
stale_factor = 5             # stale after stale_factor x the expected interval without a reading
min_silence_s = 30           # ... but never sooner than this for a learned interval (overrides may go lower)

# Per-metric settings by glob, first match wins:
# [[sensors.override]]
# match = "greenhouse/*"
# sensitivity = 1.0          # > 1 alerts more, < 1 less
# recurring = "quiet"        # instead of [anomaly] recurring, for this metric
# expected_interval_s = 60   # instead of the learned interval, for silence detection
# unit = "%"                 # when the payloads carry none

[anomaly]
threshold = 0.5              # on the detector's anomaly score in [0, 1]
detector = "model"           # the int8 ONNX window-encoder detector (docs/ANOMALY.md); or "zscore": the
                             # built-in robust z-score (learns in learning_readings, no model file)
model_dir = ""               # for detector = "model": a directory with a manifest; empty: the bundled model
window = 64                  # readings per metric the detector sees
learning_readings = 30       # a metric is "learning" (no events) until it has this many
end_after = 3                # readings below the end level that close an episode
end_ratio = 0.7              # the end level: threshold x end_ratio (hysteresis)
sensitivity = 1.0
recurring = "alarm"          # "quiet": what repeats an earlier day at these hours (a routine) raises no alarm on the
                             # model detector's level-shift, window-shape and volatility channels (fewer alarms,
                             # but a real change that looks like an earlier day is missed too)

[runtime]
provider = "cpu"             # "cpu", "cuda" or "tensorrt" (onnxruntime-gpu on a Jetson)
intra_op_threads = 1
log_severity = "warning"     # onnxruntime's own log level

[durability]
mode = "relaxed"             # relaxed: readings acknowledged on receipt; a crash loses at most the readings since the
                             #   last snapshot (snapshot_interval_s). strict: a QoS 1 reading is acknowledged only once
                             #   it is in the write-ahead log (<state_dir>/wal, group commit, one fsync for many), and
                             #   replayed after a crash: a crash loses none. strict needs mqtt.qos = 1, a writable
                             #   node.state_dir, and the broker session kept across restarts (as edged always asks)
snapshot_interval_s = 300    # per-metric state is snapshotted this often (and at every clean stop)
spool_max_messages = 10000   # events/replies held on disk while the broker is away; oldest dropped beyond

[models]
dir = ""                     # empty: <node.state_dir>/models; where `edged models pull` writes

[llm]
enabled = true               # false: answers and summaries from templates only
answer_deadline_s = 10       # an `ask` reply never comes later (a request may ask for less)
model = "smollm2-135m"       # under [models] dir; install with: edged models pull smollm2-135m
load = "first_use"           # or "start"
threads = 2
max_new_tokens = 64
lookup_tokens = 8            # drafts copied from the prompt, checked in one pass (same tokens, faster); 0: off
phrase_answers = true        # local answers reworded by the model (guarded; template otherwise)
phrase_summaries = true      # anomaly "summary" events follow "start" with the model's wording
summary_timeout_s = 10

[cloud]
enabled = false
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_file = ""            # or EDGED_CLOUD__API_KEY, or the cloud_api_key credential
timeout_s = 20               # one HTTP attempt at most (a question's deadline may cut it shorter)
max_retries = 2              # on 408/429/5xx/connection errors, honouring Retry-After
backoff_base_s = 0.5
backoff_cap_s = 8
breaker_failures = 5         # consecutive failures that open the circuit ...
breaker_cooldown_s = 60      # ... for this long, then one probe is let through
daily_requests = 500         # per rolling 24 h; 0 = no limit
daily_tokens = 200000        # per rolling 24 h; 0 = no limit
max_tokens = 400
temperature = 0.2
share = ["metric_names", "current_values", "anomaly_summaries"]  # may also add "statistics"

[homeassistant]
discovery = true             # MQTT discovery: a score sensor and an anomaly binary_sensor per metric
prefix = "homeassistant"     # Home Assistant's discovery prefix (and <prefix>/status, its birth topic)

[metrics]
prometheus = false           # true: serve Prometheus metrics on http://host:port/metrics
host = "127.0.0.1"           # "0.0.0.0" to let another machine scrape it
port = 9108

[log]
level = "info"
format = "auto"              # "auto": console on a terminal, JSON lines otherwise (journald)
"""


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_file(path: Path, *, force: bool = False) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite it)")
    write_atomic(path, DEFAULT_TOML)


def parse_cli_value(raw: str) -> Any:
    """``1884`` → int, ``true`` → bool, ``["a/#"]`` → list; anything else is a string."""
    try:
        return tomlkit.parse(f"v = {raw}")["v"]
    except Exception:
        return raw


def set_value(path: Path, key: str, raw: str) -> Any:
    """Set SECTION.KEY in the file, keeping comments; validate first, write atomically."""
    section, field = split_key(key)
    if key in ("mqtt.password", "cloud.api_key", "mqtt.request_secret"):
        raise ConfigError(f"{key}: secrets are not written to the config file; use {key}_file or the environment")
    if path.exists():
        try:
            doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        except Exception as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    else:
        doc = tomlkit.document()
    value = parse_cli_value(raw)
    if section not in doc:
        doc[section] = tomlkit.table()
    elif not isinstance(doc[section], dict):
        raise ConfigError(f"{path}: {section!r} is a {type(doc[section].unwrap()).__name__}, not a [{section}] table; fix the file first")
    doc[section][field] = value  # type: ignore[index]
    try:
        Settings.model_validate(doc.unwrap())
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, {}, str(path))) from None
    write_atomic(path, tomlkit.dumps(doc))
    return doc[section][field]  # type: ignore[index]
