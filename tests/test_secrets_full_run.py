"""One whole run with every secret configured — broker password (TLS), cloud API key, request
secret — and debug logging: none of them appears in any log line, any MQTT message edged
publishes (states, events, stats, replies, discovery), any CLI output, or any cloud request
body. The API key's only place is the Authorization header."""

from __future__ import annotations

import json

from conftest import wait_for
from fake_openai import fake_openai  # noqa: F401  (fixture)
from test_security import PASSWORD, secure_broker, secure_probe  # noqa: F401  (fixture)

API_KEY = "sk-fullrun-" + "q" * 24
REQUEST_SECRET = "full-run-request-secret-0123456789"
SECRETS = (PASSWORD, API_KEY, REQUEST_SECRET)


def test_no_secret_leaves_edged_in_a_full_run(secure_broker, daemon_factory, fake_openai, edged_cli):  # noqa: F811
    seen: list[tuple[str, bytes]] = []
    probe = secure_probe(secure_broker)
    probe.on_message = lambda c, u, m: seen.append((m.topic, m.payload))
    probe.connect("127.0.0.1", secure_broker.port)
    probe.loop_start()
    env = {"EDGED_MQTT__PASSWORD": PASSWORD, "EDGED_CLOUD__API_KEY": API_KEY,
           "EDGED_MQTT__REQUEST_SECRET": REQUEST_SECRET}
    try:
        probe.subscribe("#", 1)
        d = daemon_factory(
            secure_broker.port,
            extra=f'[cloud]\nenabled = true\nbase_url = "{fake_openai.base_url}"\nmodel = "fake-model"\n'
                  '[log]\nlevel = "debug"\nformat = "json"\n[llm]\nenabled = false\n',
            mqtt_extra=f'username = "edged"\ntls = true\nca_file = "{secure_broker.pki["ca"]}"',
            env=env,
        )
        wait_for(lambda: (f"{d.root}/status", b"online") in seen, 20, what="online over TLS with a password")
        for i in range(40):  # readings, then a spike: states, an anomaly event, discovery
            value = 95.0 if i == 39 else 20.0 + (i % 4) * 0.1
            probe.publish("sensors/greenhouse/humidity", json.dumps({"value": value, "ts": 1_750_000_000 + 60 * i}), qos=1)
        wait_for(lambda: any(t == f"{d.root}/anomaly/greenhouse/humidity" for t, _ in seen), 30, what="the spike's event")

        outputs = [
            edged_cli("status", "--json", "--config", str(d.config), env=env),
            edged_cli("ask", "Why is the greenhouse so humid and what should I do?", "--json", "--config", str(d.config), env=env),
            edged_cli("ask", "what is the greenhouse humidity now?", "--config", str(d.config), env=env),
            edged_cli("config", "show", "--config", str(d.config), env=env),
            edged_cli("status", "--config", str(d.config), env={**env, "EDGED_MQTT__REQUEST_SECRET": "a-wrong-secret-000000"}),
        ]
        assert [o.returncode for o in outputs] == [0, 0, 0, 0, 1], [o.stderr[-500:] for o in outputs]
        assert json.loads(outputs[1].stdout)["data"]["source"] == "cloud"  # the key was used
        probe.publish(f"{d.root}/request/status", json.dumps({"transaction": "unsigned"}), qos=1)
        wait_for(lambda: any(t == f"{d.root}/response/status" and b"unsigned" in p for t, p in seen), 10,
                 what="the refusal of an unsigned request")
        wait_for(lambda: any(t == f"{d.root}/stats" for t, _ in seen), 10, what="a stats message")
        assert d.stop() == 0
    finally:
        probe.disconnect()
        probe.loop_stop()

    texts = {"daemon log": d.log_path.read_text()}
    texts.update({f"mqtt {t}": p.decode(errors="replace") for t, p in seen})
    for i, o in enumerate(outputs):
        texts[f"cli #{i} stdout"], texts[f"cli #{i} stderr"] = o.stdout, o.stderr
    assert fake_openai.requests, "the cloud was never asked"
    for i, request in enumerate(fake_openai.requests):
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        texts[f"cloud request #{i} body"] = request.raw.decode(errors="replace")
        texts[f"cloud request #{i} other headers"] = json.dumps({k: v for k, v in request.headers.items() if k != "authorization"})
    assert len(texts["daemon log"].splitlines()) > 50  # debug logging really ran
    leaks = [(where, name) for where, text in texts.items()
             for name, secret in zip(("mqtt password", "api key", "request secret"), SECRETS) if secret in text]
    assert leaks == []
