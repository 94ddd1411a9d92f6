"""Soak with everything on: a real ``serve`` process, every stage at once, for long; nothing may be lost.

``native``: replay (``--push --loop`` over a simulated 128² movie of ``--stack`` frames, one series per
pass) -> ``serve --model rt --lossless --atoms`` (evidence, tracks, hops), the guard (default, with its
score), CSS, ``--record DIR --record-raw`` and ``--push-output``. Phase A sends ``--paced`` frames at
``--fps`` (150), phase B ``--fast`` frames as fast as serve takes them (lossless: the detector is held
back), into the same serve process.

``dectris``: a 4D-STEM stream of ``--patterns`` diffraction patterns (``--detector``² px, one
simulated ``--scan`` repeated under new ids) into ``serve --source-format dectris --scan``: Stream v2
from the project's sender (``DectrisV2Sender``, ``--scans-per-series`` scans per series), or Stream
v1 from LiberTEM's ``DectrisSim`` replaying a dump (``--stream v1``: one series, read by
``--dectris-stream v1``, libertem-dectris's receiver process). Every complete scan must come out as
one virtual image, equal to the scan's reference image pixel for pixel.

One thread here (``benchmarks/_soak.py``) consumes the PUSH output (every frame, in order, its CRC),
subscribes to raw, denoised, stats, atoms and hops, reads each recording chunk back as it closes
(ids in order; raw pixels equal to what was sent; denoised equal to what was pushed) and deletes it,
and samples serve's RSS, fds and ``ld-*`` threads from /proc (``--samples FILE``: every sample as CSV).
At the end serve gets SIGINT and must exit 0 with its summary. FAILED on: a frame lost (sent, pushed,
recorded raw and denoised must agree), pixels or ids that differ, a frame after a series' first
without CSS, serve counting a frame dropped, failed, malformed or unrecorded, an atoms or guard
failure, RSS drift (end against the sample after ``--warmup`` of the phase) over ``--drift`` %, more
fds at the end, an ``ld-*`` thread gone, an unclean exit. Prints one Markdown table per run (for
docs/reliability.md) and OK/FAILED. Durations on the 2-core CPU of docs/reliability.md:

    python -m benchmarks.soak_all native                                   # 2e5 frames at 150 fps, then 1e6 fast: ~1.6 h
    python -m benchmarks.soak_all native --paced 20000 --fast 100000       # short: ~10 min
    python -m benchmarks.soak_all dectris --patterns 10000000              # Stream v2, 32² patterns, 64x64 scan: ~4 min
    python -m benchmarks.soak_all dectris --stream v1 --patterns 10000000  # Stream v1 (a 4.4 GiB dump in --tmp): ~2 min
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._proc import free_addr, machine, stop
from ._soak import Phase, ProcSample, Watch, dir_bytes, lost

# ------------------------------------------------------------------ the report


def delta(p: Phase, key: str) -> int | None:
    a, b = p.stats0.get(key), p.stats1.get(key)
    return None if a is None or b is None else b - a


def total_rss(s: ProcSample) -> float:
    return s.rss_mib + s.children_rss_mib


def rss_figures(p: Phase) -> tuple[float, float, float, float, float]:
    """(after warm-up, at the end, drift %, max, slope MiB/h after warm-up), serve and its children."""
    if p.warm is None or p.end is None:
        return (float("nan"),) * 5
    t_w, warm = p.warm
    after = [(t, total_rss(s)) for t, s in p.samples if t >= t_w]
    slope = float(np.polyfit(*np.array(after).T, 1)[0]) * 3600 if len(after) >= 3 else float("nan")
    w, e = total_rss(warm), total_rss(p.end)
    return w, e, 100 * (e - w) / w, max(total_rss(s) for _, s in p.samples), slope


def rss_course(p: Phase) -> str:
    """RSS at 0, 25, 50, 75 and 100 % of the phase's time: growth that flattens, or a line."""
    if len(p.samples) < 2:
        return ""
    t = np.array([t for t, _ in p.samples])
    at = [int(np.searchsorted(t, t[0] + q * (t[-1] - t[0]))) for q in (0, 0.25, 0.5, 0.75, 1)]
    return " / ".join(f"{total_rss(p.samples[min(i, len(t) - 1)][1]):.1f}" for i in at)


def lost_frames(p: Phase, d: dict, record: bool) -> int:
    """Frames the PUSH consumer or the recording lacks (+1 if the sender did not send them all)."""
    return lost(p.frames, [d["pushed"]] + ([d["rec_raw"], d["rec_denoised"]] if record else [])) + (
        p.sent != p.frames * p.per_frame)


def phase_rows(p: Phase, w: Watch, record: bool) -> dict[str, str]:
    d = {k: p.counts1.get(k, 0) - p.counts0.get(k, 0) for k in p.counts1}
    wall = max(p.t1 - p.t0, 1e-9)
    w_rss, e_rss, drift, top, slope = rss_figures(p)
    serve_cpu, tool_cpu = (b - a for a, b in zip(p.cpu0, p.cpu1, strict=True))
    win = np.array(p.windows or [(np.nan, np.nan)])
    s1 = p.stats1
    rows = {
        ("frames sent" if p.per_frame == 1 else f"scans sent (patterns / {p.per_frame:,})") + " / pushed"
        + (" / recorded raw / denoised" if record else ""): " / ".join(
            f"{v:,}" for v in [p.sent // p.per_frame, d["pushed"]] + ([d["rec_raw"], d["rec_denoised"]] if record else [])),
        "lost": f"**{lost_frames(p, d, record)}**",
        "serve: received / denoised / dropped / failed / malformed": " / ".join(
            str(delta(p, k)) for k in ("received", "denoised", "dropped", "failed", "malformed")),
        "RSS (serve and its children) after warm-up -> end (drift)": f"{w_rss:.1f} -> {e_rss:.1f} MiB (**{drift:+.2f} %**)",
        "RSS max; slope after warm-up": f"{top:.1f} MiB; {slope:+.1f} MiB/h",
        "RSS at 0 / 25 / 50 / 75 / 100 % of the phase": f"{rss_course(p)} MiB",
        "open fds after warm-up -> end": f"{p.warm[1].fds if p.warm else '?'} -> {p.end.fds if p.end else '?'}",
        "ld-* threads alive at the end": f"{len(p.end.threads) if p.end else 0}/{len(w.threads or ())}"
        + (f" (died: {', '.join(sorted(w.deaths))})" if w.deaths else ""),
        ("fps" if p.per_frame == 1 else "images/s (patterns/s)") + " over the phase": f"{d['pushed'] / wall:,.1f}"
        + (f" ({p.sent / wall:,.0f})" if p.per_frame > 1 else "") + f" over {wall:,.0f} s",
        "CPU: serve; this tool (share of serve's)": f"{serve_cpu:,.0f} s; {tool_cpu:,.0f} s ({100 * tool_cpu / serve_cpu:.0f} %)",
        "latency p50 / p99 (median of stats windows); worst p99": f"{np.nanmedian(win[:, 0]):.1f} / {np.nanmedian(win[:, 1]):.1f}; "
        f"{np.nanmax(win[:, 1]):.1f} ms ({len(p.windows)} windows)",
        "CSS: frames with CSS / without (series started)": f"{d['pushed'] - d['css_nil']:,} / {d['css_nil']:,} ({d['series']:,})",
        "PUB received raw / denoised / atoms / hops / stats": " / ".join(
            f"{d.get('pub_' + t, 0):,}" for t in ("raw", "denoised", "atoms", "hops", "stats")),
    }
    if "atoms_frames" in s1:
        rows["atoms frames / skipped / failed; p99 ms"] = (
            f"{delta(p, 'atoms_frames'):,} / {delta(p, 'atoms_skipped'):,} / {delta(p, 'atoms_failed')}; {s1.get('atoms_ms_p99')}")
        rows["hops (stats) / tracks live"] = f"{delta(p, 'hops')} / {s1.get('tracks_live')}"
    if "scored" in s1:
        rows["guard: scored / estimates / failed; state"] = (
            f"{delta(p, 'scored'):,} / {delta(p, 'guard_estimates')} / {delta(p, 'guard_failed')}; {s1.get('guard')}")
    if record:
        rows["recording: chunks read back and deleted; unreadable; out of order"] = (
            f"{d['rec_chunks']:,}; {d['rec_unreadable']}; {d['rec_out_of_order']}")
        rows["record overflow / errors"] = f"{delta(p, 'record_overflow')} / {delta(p, 'record_errors')}"
    rows["raw pixels equal to those sent (recording; PUB)"] = (
        f"{d.get('rec_raw_equal', 0):,} (differ {d.get('rec_raw_differ', 0)}); {d['pub_raw_equal']:,} (differ {d['pub_raw_differ']})")
    return rows


def phase_ok(p: Phase, w: Watch, record: bool, drift_max: float) -> list[str]:
    d = {k: p.counts1.get(k, 0) - p.counts0.get(k, 0) for k in p.counts1}
    bad = []
    if lost_frames(p, d, record):
        bad.append(f"{p.name}: frames lost")
    if abs(rss_figures(p)[2]) > drift_max:
        bad.append(f"{p.name}: RSS drift over {drift_max:g} %")
    if any(delta(p, k) for k in ("dropped", "failed", "malformed", "record_overflow", "record_errors", "atoms_failed", "guard_failed")):
        bad.append(f"{p.name}: serve counted dropped, failed, malformed or record errors")
    if d["css_nil"] != d["series"]:
        bad.append(f"{p.name}: CSS missing on {d['css_nil'] - d['series']} frames after a series' first")
    if p.end is None or p.warm is None or p.end.fds > p.warm[1].fds:
        bad.append(f"{p.name}: more fds at the end")
    return bad


def print_table(title: str, phases: list[Phase], rows: list[dict[str, str]]) -> None:
    print(f"\n{title}\n")
    print("| | " + " | ".join(p.name for p in phases) + " |")
    print("|---|" + "---|" * len(phases))
    for key in rows[0]:
        print(f"| {key} | " + " | ".join(r.get(key, "") for r in rows) + " |")


def finish(
    w: Watch, phases: list[Phase], log: Path, args, title: str, extra: list[str]
) -> int:
    record, drift_max, samples = args.record, args.drift, args.samples
    code = w.shutdown()
    if samples is not None:
        with open(samples, "w") as fh:
            fh.write("phase,t_s,rss_mib,children_rss_mib,fds,threads\n")
            for p in phases:
                fh.writelines(f"{p.name.split(':')[0]},{t - p.samples[0][0]:.1f},{s.rss_mib:.2f},{s.children_rss_mib:.2f},"
                              f"{s.fds},{len(s.threads)}\n" for t, s in p.samples)
    text = log.read_text(errors="replace")
    summary = re.search(r"stopped: (\{.*\})", text)
    print_table(title, phases, [phase_rows(p, w, record) for p in phases])
    m, rec = w.match, w.rec
    print(f"\nthreads: {', '.join(sorted(w.threads or ()))}; died: {', '.join(sorted(w.deaths)) or 'none'}")
    print(f"PUSH: {w.pushed.frames:,} frames, {w.pushed.series:,} series, out of order {w.pushed.out_of_order}; "
          f"denoised payloads pushed = recorded: {m.matched:,} (differ {m.mismatched}; unmatched {m.pending()}); "
          f"PUB raw / denoised ids out of order (dropped by the PUB socket): "
          f"{w.pub[b'raw'].out_of_order} / {w.pub[b'denoised'].out_of_order}")
    if rec is not None:
        print(f"recording: peak {w.peak_disk / 2**20:,.0f} MiB on disk, {dir_bytes(w.record) / 2**20:,.1f} MiB left at the "
              f"end (the index), {rec.bytes_deleted / 2**30:,.1f} GiB read back and deleted" + (f"; {rec.problems}" if rec.problems else ""))
    print(f"serve: exit code {code} after SIGINT; summary line: {'yes' if summary else 'NO'}; last stats: "
          + ", ".join(f"{k} {w.stats.get(k)}" for k in ("received", "denoised", "dropped", "recorded", "recorded_raw", "pushed", "push_lost")))
    bad = [b for p in phases for b in phase_ok(p, w, record, drift_max)] + extra
    bad += [f"threads died: {sorted(w.deaths)}"] if w.deaths else []
    bad += ["serve did not exit 0 with its summary"] if code != 0 or not summary else []
    bad += ["a thread failed (serve's log)"] if "thread failed" in text else []
    bad += ["payload mismatch"] if m.mismatched or (rec and (rec.raw_differ or rec.unreadable)) or w.pub_raw_differ else []
    bad += ["pushed and recorded frames unmatched"] if record and any(m.pending()) else []
    bad += ["ids out of order"] if w.pushed.out_of_order or (rec and rec.summary()["out_of_order"]) else []
    print("\n" + ("OK" if not bad else "FAILED: " + "; ".join(bad)))
    return 0 if not bad else 1


def start_serve(args, serve_args: list[str], log: Path) -> tuple[subprocess.Popen, str, str]:
    publish, push = free_addr(), free_addr()
    cmd = [sys.executable, "-m", "livedenoise", "serve", "--model", args.model, "--publish", publish, "--push-output", push,
           "--lossless", "--atoms", "--log-level", "INFO", *serve_args]
    if args.record:
        cmd += ["--record", str(args.tmp / "rec"), "--record-raw"]
    print(f"$ {shlex.join(cmd[1:])}", flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w")), publish, push


# ------------------------------------------------------------------ native


def start_replay(cmd: list[str], tries: int = 20) -> tuple[subprocess.Popen, str | None]:
    """replay, started again while the previous one's port is not yet free to bind; and its log
    if it has already finished."""
    print(f"$ {shlex.join(cmd[1:])}", flush=True)
    for _ in range(tries):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            err = proc.communicate(timeout=1.0)[1]
        except subprocess.TimeoutExpired:
            return proc, None  # sending (communicate again: nothing it read is lost)
        if proc.returncode == 0:
            return proc, err
        if "cannot bind" not in err:
            raise SystemExit(f"replay exited with {proc.returncode}: {err[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("replay could not bind its address")


def native(args) -> int:
    import tifffile

    from livedenoise.sim import SimConfig, simulate_movie

    stack = simulate_movie(SimConfig(size=128, frames=args.stack, seed=1)).noisy_as("<u2")
    tiff = args.tmp / "stack.tif"
    tifffile.imwrite(tiff, stack)
    source, log = free_addr(), args.tmp / "serve.log"
    serve, publish, push = start_serve(args, ["--source", source, "--warmup-size", "128x128"], log)
    w = Watch(serve, publish, push, args.tmp / "rec" if args.record else None, lambda s, i: stack[i], args.sample_s)
    phases = [Phase(f"A: {args.paced:,} frames at {args.fps:g} fps", args.paced),
              Phase(f"B: {args.fast:,} frames, as fast as it goes", args.fast)]
    rates = [args.fps, 1e9]
    try:
        w.wait_stats()
        for k, (phase, fps) in enumerate(zip(phases, rates)):
            if not phase.frames:
                continue
            w.start_phase(phase, int(phase.frames * args.warmup))
            cmd = [sys.executable, "-m", "livedenoise", "replay", str(tiff), "--push", "--loop", "--fps", f"{fps:g}",
                   "--count", str(phase.frames), "--bind", source, "--series-id", str(1 + k * 10**7)]
            replay, err = start_replay(cmd)
            w.end_phase(phase)
            err = err if err is not None else replay.communicate(timeout=60)[1]
            sent = re.search(r"sent (\d+) frames", err)
            phase.sent = int(sent.group(1)) if sent else 0
            print(f"  {phase.name}: done in {phase.t1 - phase.t0:,.0f} s", flush=True)
    except BaseException:
        stop(serve, 10)
        raise
    phases = [p for p in phases if p.frames]
    return finish(w, phases, log, args, f"soak_all native ({machine()}; model {args.model}, "
                  f"provider {w.stats.get('provider')})", [])


# ------------------------------------------------------------------ dectris


def _v2_sender(conn, scan: tuple[int, int], detector: int, scans: int, per_series: int) -> None:
    """Child process: the project's Stream v2 sender, one simulated scan re-sent under new ids
    (its blobs encoded once; each message's CBOR anew, ~6 us)."""
    import cbor2

    from livedenoise.detectors import single_thread_bitshuffle
    from livedenoise.sim import DectrisV2Sender, dectris_v2_messages, simulate_4dstem

    single_thread_bitshuffle()
    patterns = simulate_4dstem(scan, detector=detector, frames=1, seed=0).patterns
    start, *images, end = (dict(cbor2.loads(m)) for m in dectris_v2_messages(patterns, series=1))
    sender = DectrisV2Sender()
    conn.send(sender.endpoint)
    conn.recv()
    tag, dumps, send, n, sent = cbor2.CBORTag, cbor2.dumps, sender.socket.send, len(images), 0
    for s in range(0, scans, per_series):
        k_scans = min(per_series, scans - s)
        ids = {"series_id": 1 + s // per_series, "series_unique_id": f"soak-{s // per_series:08d}"}
        send(dumps(tag(55799, start | ids | {"number_of_images": k_scans * n})))
        for i in range(k_scans * n):
            image = images[i % n] | ids
            image["image_id"] = i
            send(dumps(tag(55799, image)))
            sent += 1
        send(dumps(tag(55799, end | ids)))
    conn.send(sent)
    conn.recv()
    sender.close()


def dectris(args) -> int:
    import multiprocessing as mp

    from livedenoise.detectors import annular_mask, single_thread_bitshuffle
    from livedenoise.sim import simulate_4dstem

    scan, per_scan = tuple(args.scan), args.scan[0] * args.scan[1]
    scans = -(-args.patterns // per_scan)  # whole scans: every one must come out
    sim = simulate_4dstem(scan, detector=args.detector, frames=1, seed=0)
    mask = annular_mask(sim.patterns.shape[1:], sim.centre, sim.inner, sim.outer)
    reference = (sim.patterns.astype(np.float64) * mask).sum(axis=(1, 2)).reshape(scan).astype("<f4")
    if args.stream == "v1":
        from .dectris import Sim, serve_dump

        single_thread_bitshuffle()  # its OpenMP threads spin: 1.7 ms a 32² pattern on 2 busy cores, 15 us on one
        t = time.monotonic()
        dump = serve_dump(args.tmp / "dump.bin", sim, scans * per_scan)
        print(f"dump: {Path(dump).stat().st_size / 2**30:.2f} GiB in {time.monotonic() - t:.0f} s", flush=True)
        sender = Sim(dump)
        uri = sender.uri
    else:
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(
            target=_v2_sender, args=(child, scan, args.detector, scans, args.scans_per_series), daemon=True)
        proc.start()
        uri = parent.recv()
    log = args.tmp / "serve.log"
    (cx, cy), stream = sim.centre, {"v1": "v1", "v2": "auto"}[args.stream]
    serve, publish, push = start_serve(args, [
        "--source", uri, "--source-format", "dectris", "--dectris-stream", stream, "--scan", f"{scan[0]}x{scan[1]}",
        "--annulus", f"{sim.inner!r}:{sim.outer!r}", "--centre", f"{cx!r},{cy!r}", "--warmup-size", f"{scan[0]}x{scan[1]}"], log)
    w = Watch(serve, publish, push, args.tmp / "rec" if args.record else None, lambda s, i: reference, args.sample_s)
    phase = Phase(f"{args.stream}: {scans * per_scan:,} patterns of {args.detector}², {scans:,} scans of "
                  f"{scan[0]}x{scan[1]}", scans, per_scan)
    try:
        w.wait_stats()
        w.start_phase(phase, int(scans * args.warmup))
        if args.stream == "v1":
            sender.go()
            w.end_phase(phase)
            assert sender.parent.recv() == "sent"
            sender.close()
            phase.sent = scans * per_scan  # the whole dump: DectrisSim says no more than that it is done
        else:
            parent.send("go")
            w.end_phase(phase)
            phase.sent = parent.recv()
            parent.send("bye")
            proc.join(30)
    except BaseException:
        stop(serve, 10)
        raise
    s = phase.stats1
    print(f"\nserve's DECTRIS counters: detector_frames {s.get('detector_frames')}, virtual_images {s.get('virtual_images')}, "
          f"scan_incomplete {s.get('scan_incomplete')}, gaps {s.get('gaps')}, receiver {s.get('receiver', 'python')} "
          f"(restarts {s.get('receiver_restarts', 0)}); patterns/s {phase.sent / max(phase.t1 - phase.t0, 1e-9):,.0f}")
    extra = [] if (s.get("detector_frames"), s.get("scan_incomplete"), s.get("gaps"), s.get("receiver_restarts", 0)) == (
        phase.sent, 0, 0, 0) else ["DECTRIS counters: patterns missing, incomplete scans, gaps or receiver restarts"]
    return finish(w, [phase], log, args, f"soak_all dectris ({machine()}; model {args.model})", extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("native", "dectris"))
    ap.add_argument("--model", default="rt")
    ap.add_argument("--paced", type=int, default=200_000, help="native: phase A frames, at --fps")
    ap.add_argument("--fps", type=float, default=150.0)
    ap.add_argument("--fast", type=int, default=1_000_000, help="native: phase B frames, as fast as serve takes them")
    ap.add_argument("--stack", type=int, default=200, help="native: frames of the looped movie (one series per pass)")
    ap.add_argument("--stream", choices=("v1", "v2"), default="v2", help="dectris: Stream v2 (our sender) or v1 (DectrisSim)")
    ap.add_argument("--patterns", type=int, default=10_000_000, help="dectris: patterns at least (whole scans)")
    ap.add_argument("--detector", type=int, default=32, help="dectris: pattern side, px")
    ap.add_argument("--scan", type=int, nargs=2, default=(64, 64), metavar=("ROWS", "COLS"))
    ap.add_argument("--scans-per-series", type=int, default=64, help="dectris v2: scans per series")
    ap.add_argument("--no-record", dest="record", action="store_false", help="without --record DIR --record-raw")
    ap.add_argument("--warmup", type=float, default=0.1, help="share of each phase before the RSS baseline")
    ap.add_argument("--drift", type=float, default=5.0, help="RSS drift allowed, %%")
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between /proc samples")
    ap.add_argument("--samples", type=Path, default=None, help="write every /proc sample to this CSV file")
    ap.add_argument("--tmp", type=Path, default=None, help="where the recording (and the v1 dump) go")
    args = ap.parse_args()
    args.tmp = Path(tempfile.mkdtemp(prefix="ld-soak-", dir=args.tmp))
    print(f"$ python -m benchmarks.soak_all {shlex.join(sys.argv[1:])}   # files in {args.tmp}", flush=True)
    try:
        return native(args) if args.mode == "native" else dectris(args)
    finally:
        import shutil

        shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
