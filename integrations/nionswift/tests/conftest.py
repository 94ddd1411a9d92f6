# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures: a simulated Nion instrument on Swift's headless TestUI, and a real ``livedenoise serve``.

The plug-in is imported from this source tree when it is not installed, so the wire tests run
from a plain checkout; the Swift tests skip (with the reason) where Nion Swift or the usim
instrument is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

_SOURCE = pathlib.Path(__file__).resolve().parents[1]
try:
    _installed = importlib.util.find_spec("nionswift_plugin.livedenoise_nionswift") is not None
except ModuleNotFoundError:
    _installed = False
if not _installed:
    sys.path.insert(0, str(_SOURCE))  # nionswift_plugin is a namespace package: this adds our portion

def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:  # its parent package is missing
        return True


SWIFT_MISSING = next(
    (f"{name} is not installed (pip install './integrations/nionswift[test]')"
     for name in ("nion.swift", "nion.instrumentation", "nion.usim_device") if _missing(name)),
    None,
)

SERVE_PUBLISH = re.compile(r"-> PUB (\S+);")  # serve's start-up line: "serving M: SUB <source> -> PUB <address>; ..."


def _pump(ctx, until: Callable[[], bool], timeout: float) -> bool:
    """Run Swift's UI-thread work (queued tasks, data item updates) until ``until()`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ctx.document_controller.periodic()
        if until():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


@pytest.fixture
def pump() -> Callable[..., bool]:
    """``pump(ctx, until, timeout)``: what Swift's UI thread does, while waiting for ``until()``."""
    return _pump


@pytest.fixture
def swift(tmp_path: pathlib.Path) -> Iterator:
    """Nion Swift on its TestUI with the usim instrument (scan device: HAADF, MAADF...) registered,
    as nionswift-instrumentation's own tests build it; closed (scan stopped) at the end."""
    if SWIFT_MISSING:
        pytest.skip(SWIFT_MISSING)
    from nion.instrumentation.test import AcquisitionTestContext
    from nion.swift import Facade
    from nion.swift.test import TestContext
    from nion.usim_device import DeviceConfiguration

    Facade.initialize()  # the api_broker Swift hands to plug-ins
    setup = TestContext.TestSetup()  # noqa: F841 - the application and event loop, kept alive for the test
    configuration = DeviceConfiguration.AcquisitionContextConfiguration(set_configuration_location=False)
    configuration.configuration_location = str(tmp_path / "nion")  # not ./test_data, its default
    (tmp_path / "nion").mkdir()
    ctx = AcquisitionTestContext.AcquisitionTestContext(configuration, is_app=True)
    with ctx:
        try:
            yield ctx
        finally:
            scan = ctx.scan_hardware_source
            if scan.is_playing:
                scan.abort_playing()
                _pump(ctx, lambda: not scan.is_playing, 10.0)


@dataclass
class Serve:
    proc: subprocess.Popen
    publish: str
    log: pathlib.Path


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Iterator[Callable[..., Serve]]:
    """Start ``livedenoise serve`` (a real process, the shipped ``rt`` model, atoms on) on a source."""
    pytest.importorskip("livedenoise", reason="the live tests run a real livedenoise serve")
    started: list[Serve] = []

    def start(source: str, *extra: str, timeout: float = 60.0) -> Serve:
        log = tmp_path / f"serve{len(started)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "livedenoise", "serve", "--model", "rt", "--source", source,
                 "--publish", "tcp://127.0.0.1:*", "--atoms", "--provider", "cpu", "--warmup-size", "", *extra],
                stdout=out, stderr=subprocess.STDOUT,
            )
        started.append(Serve(proc, "", log))
        deadline = time.monotonic() + timeout
        while not (match := SERVE_PUBLISH.search(log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        started[-1].publish = match.group(1)
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(20)
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
