"""Settings: one TOML file, environment overrides, secrets from env/files/credentials.

Precedence, highest first: CLI overrides > environment ``EDGED_<SECTION>__<KEY>`` >
TOML file > defaults. Secrets (``mqtt.password``, ``cloud.api_key``) may also come from
``*_file`` keys or ``$CREDENTIALS_DIRECTORY/<name>`` (systemd ``LoadCredential=``).

Every error is a :class:`ConfigError` whose message names the key, the value, where the
value came from and what is allowed: the CLI prints it and exits 2, the daemon refuses to
start (or, on SIGHUP, keeps the running config).
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.toml")
ENV_PREFIX = "EDGED_"
ENV_CONFIG = "EDGED_CONFIG"


class ConfigError(Exception):
    """A configuration problem a user can fix; the message says how."""


def plain_topic(v: str) -> str:
    """A topic prefix the daemon publishes under: no wildcards, no leading/trailing '/'."""
    if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
        raise ValueError("must be a non-empty topic without wildcards or leading/trailing '/'")
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class NodeSettings(Section):
    id: str = Field("", description="node id, the <node> in every topic; default: the hostname")
    state_dir: str = "/var/lib/edged"
    stats_interval_s: float = Field(30.0, ge=1, le=86400)
    clock: Literal["wall", "data"] = "wall"
    sensor_lane_deadline_s: float = Field(30.0, ge=1, le=3600, description="watchdog: sensor lane stalled after")
    command_lane_deadline_s: float = Field(150.0, ge=1, le=3600, description="watchdog: command lane stalled after")

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if any(c in v for c in "+#/") or len(v) > 64:
            raise ValueError("must be at most 64 characters without '+', '#' or '/'")
        return v


class MqttSettings(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["v5", "v311"] = "v5"
    client_id: str = ""
    username: str = ""
    password: SecretStr | None = None
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    base_topic: str = "edged"
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_max_s: float = Field(5.0, ge=1, le=3600)
    qos: int = Field(1, ge=0, le=1)
    session_expiry_s: int = Field(3600, ge=0)
    max_queued_messages: int = Field(10000, ge=100)
    max_inflight_messages: int = Field(1000, ge=1, le=65535)
    request_secret: SecretStr | None = None  # shared secret for signed requests (DESIGN.md); empty: off
    request_secret_file: str = ""
    request_window_s: float = Field(60.0, ge=1, le=3600)

    @field_validator("request_secret")
    @classmethod
    def _secret_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and 0 < len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    _base_topic = field_validator("base_topic")(lambda cls, v: plain_topic(v))


class MetricOverride(Section):
    match: str = Field(..., min_length=1)
    sensitivity: float | None = Field(None, gt=0, le=10)
    recurring: Literal["alarm", "quiet"] | None = None
    expected_interval_s: float | None = Field(None, gt=0)
    unit: str | None = None


class SensorSettings(Section):
    topics: list[str] = Field(default_factory=lambda: ["sensors/#"])
    exclude: list[str] = Field(default_factory=lambda: ["*/linkquality", "*/battery"])
    override: list[MetricOverride] = Field(default_factory=list)
    max_metrics: int = Field(2000, ge=1, le=100_000)
    max_payload_bytes: int = Field(65536, ge=16, le=16 * 1024 * 1024)
    max_json_depth: int = Field(8, ge=1, le=64)
    future_tolerance_s: float = Field(300.0, ge=0)
    queue_size: int = Field(20000, ge=10)
    stale_factor: float = Field(5.0, ge=1.5)
    min_silence_s: float = Field(30.0, ge=0, description="a learned interval never makes silence shorter than this")

    @field_validator("topics")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one topic filter is needed")
        for f in v:
            levels = f.split("/")
            if not f or "#" in levels[:-1] or any(("+" in lv or "#" in lv) and len(lv) > 1 for lv in levels):
                raise ValueError(f"{f!r} is not a valid MQTT topic filter")
        return v


class AnomalySettings(Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    detector: Literal["zscore", "model"] = "model"
    model_dir: str = ""
    window: int = Field(64, ge=8, le=4096)
    learning_readings: int = Field(30, ge=5)
    end_after: int = Field(3, ge=1, description="readings below the end threshold that close an episode")
    end_ratio: float = Field(0.7, gt=0, le=1, description="an episode ends below threshold x end_ratio")
    sensitivity: float = Field(1.0, gt=0, le=10)
    # "quiet": a change that repeats the same 2 hours of one of the 7 days before raises no alarm on
    # the model detector's level-shift, window-shape and volatility channels (docs/ANOMALY.md section 13)
    recurring: Literal["alarm", "quiet"] = Field("alarm", description="'quiet': no alarm for what repeats an earlier day at this time")

    @model_validator(mode="after")
    def _learning_fits_window(self) -> "AnomalySettings":
        if self.learning_readings > self.window:
            raise ValueError(f"learning_readings ({self.learning_readings}) must not exceed window ({self.window}): "
                             "a metric would never leave learning")
        return self


class RuntimeSettings(Section):
    provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    intra_op_threads: int = Field(1, ge=0, le=64)
    log_severity: Literal["verbose", "info", "warning", "error", "fatal"] = "warning"


class DurabilitySettings(Section):
    # relaxed: readings acknowledged on receipt, a crash loses what came since the last snapshot;
    # strict: QoS 1 readings acknowledged only once in the write-ahead log, a crash loses none.
    mode: Literal["relaxed", "strict"] = "relaxed"
    snapshot_interval_s: float = Field(300.0, ge=5, le=86400)
    spool_max_messages: int = Field(10000, ge=10, le=10_000_000)


class ModelsSettings(Section):
    dir: str = ""


class LlmSettings(Section):
    enabled: bool = True
    answer_deadline_s: float = Field(10.0, ge=0.1, le=120, description="an `ask` reply never comes later")
    model: str = "smollm2-135m"
    load: Literal["start", "first_use"] = "first_use"
    threads: int = Field(2, ge=1, le=64)
    max_new_tokens: int = Field(64, ge=8, le=1024)
    lookup_tokens: int = Field(8, ge=0, le=32, description="prompt-lookup draft length; 0 = one token per pass")
    phrase_answers: bool = True
    phrase_summaries: bool = True
    summary_timeout_s: float = Field(10.0, gt=0, le=300)


class CloudSettings(Section):
    enabled: bool = False
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    api_key_file: str = ""
    timeout_s: float = Field(20.0, gt=0, le=300)
    max_retries: int = Field(2, ge=0, le=10)
    backoff_base_s: float = Field(0.5, ge=0, le=60)
    backoff_cap_s: float = Field(8.0, ge=0, le=600)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_cooldown_s: float = Field(60.0, ge=0, le=86400)
    daily_requests: int = Field(500, ge=0, description="per rolling 24 h; 0 = no limit")
    daily_tokens: int = Field(200_000, ge=0, description="per rolling 24 h; 0 = no limit")
    max_tokens: int = Field(400, ge=1, le=32768)
    temperature: float = Field(0.2, ge=0, le=2)
    share: list[Literal["metric_names", "current_values", "anomaly_summaries", "statistics"]] = Field(
        default_factory=lambda: ["metric_names", "current_values", "anomaly_summaries"],
        description="what facts may leave the device with a cloud request")

    @model_validator(mode="after")
    def _backoff(self) -> "CloudSettings":
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(f"backoff_cap_s ({self.backoff_cap_s}) must be >= backoff_base_s ({self.backoff_base_s})")
        return self


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class HomeAssistantSettings(Section):
    discovery: bool = True
    prefix: str = "homeassistant"

    _prefix = field_validator("prefix")(lambda cls, v: plain_topic(v))


class MetricsSettings(Section):
    prometheus: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=1, le=65535)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    node: NodeSettings = Field(default_factory=NodeSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    sensors: SensorSettings = Field(default_factory=SensorSettings)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    durability: DurabilitySettings = Field(default_factory=DurabilitySettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    cloud: CloudSettings = Field(default_factory=CloudSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _distinct_prefixes(self) -> "Settings":
        from .messages import filter_prefix

        seen: dict[str, str] = {}
        for f in self.sensors.topics:
            prefix = filter_prefix(f)
            if prefix in seen:
                raise ValueError(
                    f"sensors.topics: filters {seen[prefix]!r} and {f!r} share the prefix {prefix!r} "
                    "and would produce the same metric names"
                )
            seen[prefix] = f
        return self

    @model_validator(mode="after")
    def _strict_needs_qos1(self) -> "Settings":
        if self.durability.mode == "strict" and self.mqtt.qos != 1:
            raise ValueError("durability.mode = 'strict' needs mqtt.qos = 1: only QoS 1 readings are "
                             "acknowledged and redelivered, QoS 0 ones cannot be made durable")
        return self

    # Derived values (not settings of their own).
    @property
    def node_id(self) -> str:
        return self.node.id or socket.gethostname().split(".")[0] or "edged"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edged-{self.node_id}"

    @model_validator(mode="after")
    def _quiet_needs_the_model(self) -> "Settings":
        if self.anomaly.detector == "zscore":
            keys = ["anomaly.recurring"] if self.anomaly.recurring == "quiet" else []
            keys += [f"sensors.override[{i}].recurring" for i, r in enumerate(self.sensors.override) if r.recurring == "quiet"]
            if keys:
                raise ValueError(f"{', '.join(keys)} = 'quiet' needs anomaly.detector = 'model': the z-score detector "
                                 "does not compare a reading with earlier days")
        return self

    def recurring_quiet(self, metric: str) -> bool:
        """Whether ``metric`` is set to recurring = "quiet" (its override, else [anomaly])."""
        rule = self.override_for(metric)
        return (rule.recurring if rule and rule.recurring else self.anomaly.recurring) == "quiet"

    def override_for(self, metric: str) -> MetricOverride | None:
        from fnmatch import fnmatchcase

        for rule in self.sensors.override:
            if fnmatchcase(metric, rule.match):
                return rule
        return None


SECRET_KEYS = {"mqtt.password": "mqtt_password", "cloud.api_key": "cloud_api_key",
               "mqtt.request_secret": "request_secret"}


# --------------------------------------------------------------------------- loading


def config_path(cli_path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return DEFAULT_CONFIG_PATH


def read_toml(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"config file {path} does not exist (create one with: edged config init {path})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError; so are absurd integers
        raise ConfigError(f"config file {path} is not valid TOML: {str(exc)[:200]}") from None


def env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``EDGED_MQTT__PORT=1884`` → ``{"mqtt": {"port": "1884"}}`` plus key → variable name."""
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected EDGED_<SECTION>__<KEY>, e.g. EDGED_MQTT__PORT")
        section, key = parts
        value: Any = raw
        # Secrets are taken verbatim: a password may well start with '[' or '{', and a
        # parse error must not echo it.
        if raw.strip()[:1] in ("[", "{") and f"{section}.{key}" not in SECRET_KEYS:
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                raise ConfigError(f"environment variable {name}: {raw[:60]!r} is not valid JSON") from None
        data.setdefault(section, {})[key] = value
        origin[f"{section}.{key}"] = name
    return data, origin


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(section: str) -> type[BaseModel] | None:
    field = Settings.model_fields.get(section)
    return field.annotation if field is not None else None  # type: ignore[return-value]


def format_validation_error(exc: ValidationError, origin: dict[str, str], source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        where = origin.get(".".join(loc[:2]), source)
        if err["type"] == "extra_forbidden":
            parent = Settings if len(loc) == 1 else _section_model(loc[0])
            known = _known_keys(parent) if parent and isinstance(parent, type) and issubclass(parent, BaseModel) else []
            if len(loc) > 2 and loc[1] == "override":
                known = _known_keys(MetricOverride)
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"{key}: unknown key{guess}; allowed: {', '.join(known)} [{where}]")
            continue
        value = err.get("input")
        if any(s in key for s in SECRET_KEYS):
            shown = "'**********'"
        else:
            shown = repr(value) if not isinstance(value, dict) else "a table"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if not loc:  # a check across sections: its message names the keys
            lines.append(f"{msg} [{source}]")
            continue
        lines.append(f"{key} = {shown}: {msg} [{where}]")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: str | os.PathLike | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    missing_ok: bool | None = None,
) -> Settings:
    """Build the one Settings object. ``missing_ok`` defaults to True only for the default path."""
    environ = dict(os.environ if environ is None else environ)
    resolved = config_path(path, environ)
    if missing_ok is None:
        missing_ok = resolved == DEFAULT_CONFIG_PATH and not path and not environ.get(ENV_CONFIG)
    data = read_toml(resolved, missing_ok=missing_ok)
    env_data, origin = env_overrides(environ)
    merged = _merge(_merge(data, env_data), overrides or {})
    for key in (overrides or {}):
        origin[key] = "command line"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, str(resolved))) from None
    resolve_secrets(settings, environ, from_env={k for k, v in origin.items() if v.startswith(ENV_PREFIX)})
    return settings


def _read_secret(path: str, key: str) -> SecretStr:
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):  # a NUL in the path, or a file that is not UTF-8 text
        raise ConfigError(f"{key}: secret file {path[:120]!r} is not a readable UTF-8 text file") from None


def resolve_secrets(settings: Settings, environ: dict[str, str], from_env: set[str] = frozenset()) -> None:
    """Secrets by DESIGN.md's precedence: environment > *_file > $CREDENTIALS_DIRECTORY > TOML."""
    cred_dir = environ.get("CREDENTIALS_DIRECTORY", "")
    for key, cred_name in SECRET_KEYS.items():
        if key in from_env:
            continue
        section_name, field = key.split(".")
        section = getattr(settings, section_name)
        file_path = getattr(section, f"{field}_file")
        if file_path:
            setattr(section, field, _read_secret(file_path, f"{key}_file"))
        elif cred_dir and (Path(cred_dir) / cred_name).is_file():
            setattr(section, field, _read_secret(str(Path(cred_dir) / cred_name), key))


def world_readable_secret_warning(path: Path, data: dict[str, Any]) -> str | None:
    """A config file holding a secret that group/others can read deserves a warning."""
    holds_secret = any(isinstance(data.get(s), dict) and data[s].get(k) for s, k in (x.split(".") for x in SECRET_KEYS))
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if holds_secret and mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{path} holds a secret and is readable by others (chmod 600 it, or use a *_file / credential)"
    return None


# --------------------------------------------------------------------------- dotted keys


def split_key(key: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"key {key!r}: expected SECTION.KEY, e.g. mqtt.port")
    section, field = parts
    model = _section_model(section)
    if model is None:
        hint = difflib.get_close_matches(section, list(Settings.model_fields), n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"key {key!r}: unknown section {section!r}{guess}; sections: {', '.join(Settings.model_fields)}")
    if field not in model.model_fields:
        hint = difflib.get_close_matches(field, list(model.model_fields), n=1)
        guess = f" (did you mean {section}.{hint[0]}?)" if hint else ""
        raise ConfigError(f"key {key!r}: unknown key{guess}; keys in [{section}]: {', '.join(model.model_fields)}")
    return section, field


def get_value(settings: Settings, key: str) -> Any:
    section, field = split_key(key)
    value = getattr(getattr(settings, section), field)
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, list):
        return [v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
    return value


def masked_dict(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked, ready for TOML/JSON."""
    data = settings.model_dump(mode="python", exclude_none=True)
    for key in SECRET_KEYS:
        section, field = key.split(".")
        if getattr(getattr(settings, section), field) is not None:
            data[section][field] = "**********"
    for rule in data["sensors"]["override"]:
        for k in [k for k, v in rule.items() if v is None]:
            del rule[k]
    return data
