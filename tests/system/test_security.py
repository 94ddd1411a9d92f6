"""Security: localhost by default, CURVE key pairs, and only allowed keys get frames (issue 7)."""

from __future__ import annotations

import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from livedenoise.daemon import DEFAULT_PUBLISH, DEFAULT_SOURCE, SecurityConfig
from livedenoise.protocol import decode_published, encode_image
from livedenoise.security import curve_client, make_keys
from livedenoise.sim import ReplayConfig

needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def test_sockets_bind_to_localhost_unless_told_otherwise():
    from typer.main import get_command

    from livedenoise.cli import app

    assert DEFAULT_SOURCE.startswith("tcp://127.0.0.1:") and DEFAULT_PUBLISH.startswith("tcp://127.0.0.1:")
    assert ReplayConfig().bind.startswith("tcp://127.0.0.1:")
    cli = get_command(app)
    for command, option in (("serve", "publish"), ("serve", "source"), ("replay", "bind"), ("demo", "publish")):
        (param,) = [p for p in cli.commands[command].params if p.name == option]
        assert param.default.startswith("tcp://127.0.0.1:"), (command, option, param.default)


@needs_curve
def test_keys_command_writes_a_key_pair_once(tmp_path):
    run = [sys.executable, "-m", "livedenoise", "keys", str(tmp_path / "alice")]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    public, secret = tmp_path / "alice.key", tmp_path / "alice.key_secret"
    assert "secret-key" not in public.read_text() and "secret-key" in secret.read_text()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "not overwriting" in again.stderr


def curve_sub(address: str, server_key=None, secret=None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if server_key is not None:
        curve_client(sock, server_key, secret)
    sock.connect(address)
    return sock


def drain(sock: zmq.Socket) -> list:
    msgs = []
    while sock.poll(0):
        msgs.append(decode_published(sock.recv_multipart()))
    return msgs


@needs_curve
def test_only_clients_with_an_allowed_key_receive_the_output(conv_model, detector, daemon_factory, tmp_path):
    server, alice, mallory = (make_keys(tmp_path / n) for n in ("server", "alice", "mallory"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(alice[0].read_bytes())
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True, security=SecurityConfig(curve_secret=server[1], curve_allow=allowed))
    good = curve_sub(daemon.publish_address, server[0], alice[1])
    stranger = curve_sub(daemon.publish_address, server[0], mallory[1])  # valid CURVE, unknown key
    plain = curve_sub(daemon.publish_address)  # no encryption at all
    anonymous = curve_sub(daemon.publish_address, server[0])  # throw-away key pair
    got: list = []
    image_id = 0
    deadline = time.monotonic() + 10
    while sum(m.topic == b"denoised" for m in got) < 5 and time.monotonic() < deadline:
        push.send_multipart(encode_image(np.zeros((16, 16), "<u2"), series_id=1, image_id=image_id))
        image_id += 1
        time.sleep(0.05)
        got += drain(good)
    time.sleep(0.3)
    leaked = drain(stranger) + drain(plain) + drain(anonymous)
    push.close()
    for s in (good, stranger, plain, anonymous):
        s.close()
    assert sum(m.topic == b"denoised" for m in got) >= 5 and any(m.topic == b"stats" for m in got)
    assert leaked == []


@needs_curve
def test_encrypted_input_reaches_only_an_allowed_daemon(conv_model, replayer, daemon_factory, tmp_path):
    detector, good_key, bad_key = (make_keys(tmp_path / n) for n in ("detector", "daemon", "intruder"))
    n = 30
    replay = replayer(synthetic=True, size=32, fps=300, count=n, push=True, curve_secret=detector[1],
                      curve_allow=good_key[0])
    source = replay.endpoint
    intruder = daemon_factory(model=conv_model, source=source, pull=True, security=SecurityConfig(curve_secret=bad_key[1], source_server_key=detector[0]))
    daemon = daemon_factory(model=conv_model, source=source, pull=True, security=SecurityConfig(curve_secret=good_key[1], source_server_key=detector[0]))
    # with --curve-secret the daemon's output is encrypted too: subscribe as a CURVE client
    sub = curve_sub(daemon.publish_address, good_key[0])
    deadline = time.monotonic() + 10
    while not any(m.topic == b"stats" for m in drain(sub)) and time.monotonic() < deadline:
        time.sleep(0.05)
    replay.start()
    denoised = []
    deadline = time.monotonic() + 20
    while len(denoised) < n and time.monotonic() < deadline:
        if sub.poll(200):
            msg = decode_published(sub.recv_multipart())
            if msg.topic == b"denoised":
                denoised.append(msg)
    replay.join(20)
    sub.close()
    assert [d.header["image_id"] for d in denoised] == list(range(n))
    assert intruder.stats.snapshot()["received"] == 0
