"""TLS and password variants of a real Mosquitto: the daemon connects with the right
settings, and a wrong password gives a clear log line per attempt with backoff."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import time

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, free_port, wait_for

PASSWORD = "s3cret-Pa55word-xyz"


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca_and_server(directory):
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edged test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = _key()
    import ipaddress

    srv = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(_pem_key(srv_key))
    return paths


@pytest.fixture
def secure_broker(tmp_path):
    """Mosquitto with TLS and password authentication on one listener."""
    work = tmp_path / "secure"
    work.mkdir()
    pki = make_ca_and_server(work)
    pwfile = work / "passwd"
    pwfile.write_text(f"edged:{PASSWORD}\nprobe:probe-pw\n")
    subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True)
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
        f"cafile {pki['ca']}\ncertfile {pki['cert']}\nkeyfile {pki['key']}\n"
    )
    b = Broker(work, conf, port=port).start()
    b.pki = pki
    yield b
    b.stop()


def secure_probe(broker) -> paho.Client:
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.username_pw_set("probe", "probe-pw")
    c.tls_set(ca_certs=str(broker.pki["ca"]), cert_reqs=ssl.CERT_REQUIRED)
    return c


def test_tls_and_password_from_env(secure_broker, daemon_factory):
    got: list[bytes] = []
    probe = secure_probe(secure_broker)
    probe.on_message = lambda c, u, m: got.append(m.payload)
    probe.connect("127.0.0.1", secure_broker.port)
    probe.loop_start()
    try:
        d = daemon_factory(
            secure_broker.port,
            mqtt_extra=f'username = "edged"\ntls = true\nca_file = "{secure_broker.pki["ca"]}"',
            env={"EDGED_MQTT__PASSWORD": PASSWORD},
        )
        probe.subscribe(f"{d.root}/status", 1)
        wait_for(lambda: b"online" in got, 15, what="online over TLS with a password")
        assert d.stop() == 0
        log_text = d.log_path.read_text()
        assert PASSWORD not in log_text
    finally:
        probe.disconnect()
        probe.loop_stop()


def test_wrong_password_is_reported_with_backoff(secure_broker, daemon_factory):
    d = daemon_factory(
        secure_broker.port,
        mqtt_extra=f'username = "edged"\ntls = true\nca_file = "{secure_broker.pki["ca"]}"',
        env={"EDGED_MQTT__PASSWORD": "wrong-password"},
    )
    first = d.wait_log("mqtt_refused", timeout=15)
    assert "password" in first["hint"] or "username" in first["hint"]
    t0 = time.monotonic()
    wait_for(lambda: sum(e.get("event") == "mqtt_refused" for e in d.log_lines()) >= 3, 20, what="three refusals")
    elapsed = time.monotonic() - t0
    refusals = sum(e.get("event") == "mqtt_refused" for e in d.log_lines())
    # Backoff, not a tight loop: a few attempts, each one log line, none with the password.
    assert elapsed >= 1.0
    assert refusals < 20
    assert "wrong-password" not in d.log_path.read_text()
    # One line per attempt: the refusal, not also a "handshake failed" for the same attempt.
    assert not [e for e in d.log_lines() if e.get("event") == "mqtt_handshake_failed"]
    assert d.stop() == 0


def test_untrusted_certificate_is_a_clear_error(secure_broker, daemon_factory, tmp_path):
    other = make_ca_and_server(tmp_path)  # a CA that did not sign the broker's certificate
    d = daemon_factory(
        secure_broker.port,
        mqtt_extra=f'username = "edged"\ntls = true\nca_file = "{other["ca"]}"',
        env={"EDGED_MQTT__PASSWORD": PASSWORD},
    )
    event = d.wait_log("mqtt_connect_failed", timeout=15)
    assert "certificate" in json.dumps(event).lower()
    assert d.stop() == 0


def test_plaintext_to_a_tls_port_is_explained(secure_broker, daemon_factory):
    d = daemon_factory(secure_broker.port, mqtt_extra='username = "edged"',
                       env={"EDGED_MQTT__PASSWORD": PASSWORD})
    event = d.wait_log("mqtt_handshake_failed", timeout=20)
    assert "mqtt.tls = true" in event["hint"]
    wait_for(lambda: sum(e.get("event") == "mqtt_handshake_failed" for e in d.log_lines()) >= 2, 20,
             what="a second attempt, after backoff")
    assert d.stop() == 0
