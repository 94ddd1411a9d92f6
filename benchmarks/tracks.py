"""Evidence per atom, tracks and hops: what they cost per frame, how the numpy linker compares with
trackpy, and how well they do against the simulator's truth.

    python -m benchmarks.tracks [--conditions dose300,dose100,dose300-grad,dev-D] [--frames 48]
                                [--hop-confirm 1] [--skip-quality] [--skip-cost] [--skip-trackpy]
                                [--json out.json]
    python -m benchmarks.tracks --live [--live-sizes 128:150,512:15] [--live-seconds 30]

Prints three parts (issue 17), or with ``--live`` a fourth alone:

1. **Cost per frame** of what the daemon will run per denoised frame: ``find_atoms`` (the
   daemon's absolute threshold 0.4 on the [0, 1] output), ``atom_evidence`` on the raw frame,
   ``Tracker.update`` and ``TrackEvidence.update``, at 128^2 and 512^2 (dose 300, frames
   denoised beforehand by the shipped ``rt`` model through :class:`livedenoise.engine.Engine`, not
   timed). p50 / p99 over ``--passes`` passes of the movie, single thread, wall time. Target:
   <= 2 ms p99 at 128^2.
2. **numpy linker vs trackpy** (``trackpy.link``, same search range and memory) on the same
   detections: the true positions, and the atoms found on the ``rt`` model's output (misses and
   false atoms included). Agreement = share of detections whose predecessor in their track
   (or none) is the same; differences are split into those inside an ambiguous group (a detection
   or a track with more than one candidate within the search range, where trackpy minimises the
   summed squared displacement and the daemon's linker links greedily by distance) and the
   others. Time ratio on the whole movie.
3. **Against the truth**, per condition (those of ``benchmarks/quality.py``: dose 300; dose 100
   with hop probability 0.1; dose 300 with a thickness gradient 4; dev-D when
   ``../shared/data/dev-D`` is there) for every shipped model and two baselines (Gaussian
   sigma 1 px and the causal mean of 3 frames then Gaussian sigma 1 px): atoms at the method's
   best-F1 threshold (``evaluate``'s rule; for the models also the daemon's 0.4), evidence AUC
   for true against invented atoms and precision at 90 % recall, per frame (z) and accumulated
   along the track (Stouffer's z so far: what the operator sees live); hops: recall,
   precision, placement error, delay and the share placed within 1 px and 2 frames; identity
   switches per 100 atom-frames. Targets: AUC >= 0.9 at dose 300 and >= 0.8 at dose 100.
   Hops are those the daemon publishes: confirmed by the next frame (``--hop-confirm``, a
   comma-separated list of ``Tracker`` ``confirm_frames`` values, each scored in turn: ``0,1``
   gives before / after confirmation on the same detections; parts 1 and 3 run per value).
4. ``--live`` (only that part): the daemon itself, ``serve --model rt --atoms`` (evidence and
   tracks on, the defaults) fed by ``replay --synthetic`` (PUB, dose 300 frames with hops) at
   each SIZE:FPS for ``--live-seconds``, both as child processes like a detector and a daemon.
   Printed: frames sent, received, denoised, dropped; atom frames, skipped, failed; the atom
   thread's time per frame (find + evidence + tracks, from each ``atoms`` message's
   ``analysis_ms`` (wall) and ``analysis_cpu_ms`` (the thread's CPU time: what it costs on a
   machine that others share), all frames of the run) p50 / p99; hops, track resets, weak atoms. Targets: nothing dropped at
   150 fps at 128^2; atoms + evidence + tracks <= 2 ms p99 per 128^2 frame.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from livedenoise.analysis import MAX_LINK, Tracker, TrackEvidence, atom_evidence, find_atoms, link_frames
from livedenoise.scoring import detection_scores, score_tracks

from ._conditions import DAEMON_THRESHOLD, DEFAULT, DEV_D, ROOT, conditions, load_condition
from ._conditions import SHIPPED as MODELS
from ._proc import machine
from ._report import fmt, pct
from ._tracks_live import LIVE_VARIANTS, live

READ_NOISE = float(np.hypot(0.25, 0.15))  # the simulator's read noise and row offset, counts


def model_path(name: str) -> Path:
    return ROOT / "livedenoise" / "models" / f"{name}.onnx"


def denoise(engine, noisy: np.ndarray, series: int) -> np.ndarray:
    out = engine.run_stack(noisy, series=series, restart=True)
    engine.reset_series(series)
    return out


# ---------------------------------------------------------------------------- 1. cost


def cost(size: int, frames: int, passes: int, engine, confirm: int = 1) -> dict:
    from livedenoise.sim import SimConfig, simulate_movie

    m = simulate_movie(SimConfig(size=size, frames=frames, dose=300, seed=2))
    den = denoise(engine, m.noisy, series=7)
    tr, te = Tracker(confirm_frames=confirm), TrackEvidence()
    total, parts = [], {"atoms": [], "evidence": [], "tracks": []}
    counts = []
    pc = time.perf_counter
    for p in range(passes):
        tr.reset()
        te.reset()
        for t in range(frames):
            raw, d = m.noisy[t], den[t]
            t0 = pc()
            atoms = find_atoms(d, threshold=DAEMON_THRESHOLD)
            t1 = pc()
            ev = atom_evidence(raw, atoms.positions, read_noise=READ_NOISE)
            t2 = pc()
            ids = tr.update(atoms.positions, image_id=p * frames + t, shape=raw.shape)
            te.update(ids, ev.z, ev.llr)
            t3 = pc()
            total.append(1e3 * (t3 - t0))
            parts["atoms"].append(1e3 * (t1 - t0))
            parts["evidence"].append(1e3 * (t2 - t1))
            parts["tracks"].append(1e3 * (t3 - t2))
            counts.append(len(atoms))
    return {
        "size": size, "hop_confirm": confirm, "samples": len(total), "atoms_per_frame": float(np.mean(counts)),
        "p50_ms": pct(total, 50), "p99_ms": pct(total, 99),
        "parts_p50_ms": {k: pct(v, 50) for k, v in parts.items()},
        "parts_p99_ms": {k: pct(v, 99) for k, v in parts.items()},
    }


# ---------------------------------------------------------------------------- 2. trackpy


def predecessors(ids: list[np.ndarray]) -> dict[tuple[int, int], tuple[int, int] | None]:
    last: dict[int, tuple[int, int]] = {}
    out = {}
    for t, frame_ids in enumerate(ids):
        for i, tid in enumerate(frame_ids.tolist()):
            out[(t, i)] = last.get(tid)
            last[tid] = (t, i)
    return out


def trackpy_ids(found: list[np.ndarray], max_disp: float, memory: int) -> tuple[list[np.ndarray], float]:
    import pandas as pd
    import trackpy as tp

    tp.quiet()
    rows = [(float(x), float(y), t, i) for t, f in enumerate(found) for i, (x, y) in enumerate(f)]
    df = pd.DataFrame(rows, columns=["x", "y", "frame", "i"])
    t0 = time.perf_counter()
    out = tp.link(df, search_range=max_disp, memory=memory)
    dt = time.perf_counter() - t0
    ids = [np.full(len(f), -1, np.int64) for f in found]
    for fr, i, p in zip(out["frame"].to_numpy(), out["i"].to_numpy(), out["particle"].to_numpy()):
        ids[int(fr)][int(i)] = int(p)
    return ids, dt


def ambiguous(found: list[np.ndarray], ids: list[np.ndarray], max_disp: float, memory: int) -> set[tuple[int, int]]:
    """Detections with more than one candidate track, or whose nearest track has more than one
    candidate detection, within the search range (live tracks of the daemon's linker)."""
    out: set[tuple[int, int]] = set()
    live: dict[int, tuple[int, np.ndarray]] = {}
    for t, (f, frame_ids) in enumerate(zip(found, ids)):
        live = {k: v for k, v in live.items() if t - v[0] <= memory + 1}
        if live and len(f):
            tpos = np.array([v[1] for v in live.values()])
            d = np.hypot(f[:, None, 0] - tpos[None, :, 0], f[:, None, 1] - tpos[None, :, 1]) <= max_disp
            per_det = d.sum(axis=1)
            per_trk = d.sum(axis=0)
            for i in range(len(f)):
                if per_det[i] > 1 or (per_det[i] == 1 and per_trk[d[i]].max() > 1):
                    out.add((t, i))
        for i, tid in enumerate(frame_ids.tolist()):
            live[tid] = (t, np.asarray(f[i], np.float64))
    return out


def compare_trackpy(found: list[np.ndarray], max_disp: float, memory: int) -> dict:
    t0 = time.perf_counter()
    ours, _ = link_frames(found, max_disp=max_disp, memory=memory)
    t_ours = time.perf_counter() - t0
    theirs, t_tp = trackpy_ids(found, max_disp, memory)
    a, b = predecessors(ours), predecessors(theirs)
    diff = [k for k in a if a[k] != b[k]]
    amb = ambiguous(found, ours, max_disp, memory)
    return {
        "detections": len(a), "same": len(a) - len(diff), "agreement": 1 - len(diff) / max(len(a), 1),
        "differ_ambiguous": sum(k in amb for k in diff), "differ_other": sum(k not in amb for k in diff),
        "ambiguous_detections": len(amb),
        "numpy_ms_per_frame": 1e3 * t_ours / len(found), "trackpy_ms_per_frame": 1e3 * t_tp / len(found),
        "speed_ratio": t_tp / t_ours if t_ours > 0 else None,
    }


# ---------------------------------------------------------------------------- 3. quality


def gaussian(frames: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(f.astype(np.float64), sigma) for f in frames]).astype(np.float32)


def temporal_gauss(frames: np.ndarray, n: int = 3, sigma: float = 1.0) -> np.ndarray:
    c = np.cumsum(np.concatenate([np.zeros_like(frames[:1]), frames.astype(np.float64)]), axis=0)
    idx = np.arange(len(frames))
    lo = np.maximum(idx - n + 1, 0)
    mean = (c[idx + 1] - c[lo]) / (idx + 1 - lo)[:, None, None]
    return gaussian(mean.astype(np.float32), sigma)


def score_method(den: np.ndarray, noisy: np.ndarray, pos: np.ndarray, threshold: float | None,
                 max_disp: float, memory: int, confirms: tuple[int, ...] = (1,)) -> list[dict]:
    """One row per hop confirmation of the atoms found at ``threshold`` (None: the best-F1 one)."""
    if threshold is None:
        threshold = detection_scores(den, pos)["threshold"]
    found = [find_atoms(d, threshold=threshold).positions for d in den]
    rows = []
    for confirm in confirms:  # confirmation drops hop events, never changes the links
        ts = score_tracks(found, pos, noisy, max_disp=max_disp, memory=memory, confirm_frames=confirm,
                          read_noise=READ_NOISE)
        rows.append({"threshold": float(threshold), "n_found": ts.n_found, "hop_confirm": confirm,
                     "evidence_frame": ts.evidence_frame, "evidence_track": ts.evidence_track, "hops": ts.hops,
                     "switches": ts.switches})
    return rows


def quality(conds: list[str], frames: int, engines: dict, max_disp: float, memory: int,
            confirms: tuple[int, ...] = (1,)) -> list[dict]:
    allc = conditions()
    rows = []
    for ci, key in enumerate(conds):
        c = allc[key]
        if c.dev_d and not (DEV_D / "D_noisy.tif").is_file():
            print(f"== {key}: dev-D not found at {DEV_D}, skipped", flush=True)
            continue
        d = load_condition(c, frames, 128)
        print(f"== {key}: {c.label}, {len(d.noisy)} frames", flush=True)
        methods: list[tuple[str, np.ndarray, list[float | None]]] = [
            ("gaussian-1", gaussian(d.noisy), [None]),
            ("temporal-3+gaussian-1", temporal_gauss(d.noisy), [None]),
        ]
        for name, eng in engines.items():
            methods.append((f"n2a-{name}", denoise(eng, d.noisy, series=100 + ci), [None, DAEMON_THRESHOLD]))
        for name, den, thrs in methods:
            scored = [(thr, r) for thr in thrs
                      for r in score_method(den, d.noisy, d.positions, thr, max_disp, memory, confirms)]
            for thr, r in scored:
                r |= {"condition": key, "method": name, "rule": "best F1" if thr is None else f"daemon {thr}"}
                rows.append(r)
                ef, et, h, s = r["evidence_frame"], r["evidence_track"], r["hops"], r["switches"]
                print(f"   {name:22s} {r['rule']:10s} confirm {r['hop_confirm']} atoms {r['n_found']:5d}"
                      f" invented {ef['n_invented']:4d}"
                      f" | AUC frame {fmt(ef['auc'], '.3f')} track {fmt(et['auc'], '.3f')}"
                      f" | P@90 {fmt(ef['precision_at_recall'], '.3f')}/{fmt(et['precision_at_recall'], '.3f')} (all {fmt(ef['precision_all'], '.3f')})"
                      f" | hops {h['n_matched']}/{h['n_true']} det {h['n_detected']} R {fmt(h['recall'], '.2f')}"
                      f" P {fmt(h['precision'], '.2f')} err {fmt(h['placement_error_px'], '.2f')} delay {fmt(h['delay_frames'], '.2f')}"
                      f" placed<=1px,2fr {fmt(h['recall_placed'], '.2f')} | IDsw/100 {fmt(s['per_100'], '.2f')}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conditions", default=DEFAULT)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--passes", type=int, default=10, help="passes over the movie for the cost percentiles")
    ap.add_argument("--cost-sizes", default="128,512")
    ap.add_argument("--max-disp", type=float, default=MAX_LINK)
    ap.add_argument("--memory", type=int, default=2)
    ap.add_argument("--hop-confirm", default="1",
                    help="Tracker confirm_frames, comma-separated (0,1: hops before / after confirmation)")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-trackpy", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--live", action="store_true", help="only part 4: serve --atoms fed by replay, per SIZE:FPS")
    ap.add_argument("--live-sizes", default="128:150,512:15")
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--live-model", default="rt")
    ap.add_argument("--live-variants", default="full",
                    help=f"comma-separated, each run in turn at every size: {', '.join(LIVE_VARIANTS)}")
    args = ap.parse_args(argv)
    confirms = tuple(int(c) for c in args.hop_confirm.split(","))

    if args.live:
        print(f"machine: {machine()}; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        rows = []
        runs = [(item.split(":"), v) for item in args.live_sizes.split(",") for v in args.live_variants.split(",")]
        for (size, fps), variant in runs:
            r = live(int(size), float(fps), args.live_seconds, args.live_model, variant)
            rows.append(r)
            st = r["stats"]
            print(f"live {r['size']}^2 at {r['fps']:g} fps ({args.live_model}, {variant}): sent {r['sent']},"
                  f" received {st['received']}, denoised {st['denoised']}, dropped {st['dropped']}, failed {st['failed']};"
                  f" atom frames {st['atoms_frames']}, skipped {st['atoms_skipped']}, failed {st['atoms_failed']},"
                  f" capped {st['atoms_capped']}; atom thread per frame: wall p50 {r['analysis_ms_p50']:.3f} ms,"
                  f" p99 {r['analysis_ms_p99']:.3f} ms, max {r['analysis_ms_max']:.3f} ms; CPU p50"
                  f" {r['analysis_cpu_ms_p50']:.3f} ms, p99 {r['analysis_cpu_ms_p99']:.3f} ms ({r['atoms_messages']} frames);"
                  f" {st['atoms_last']} atoms, {st['atoms_weak_last']} weak in the last frame; hops {st['hops']},"
                  f" track resets {st['tracks_resets']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "live": rows}, indent=1, default=str))
        return {"live": rows}

    from livedenoise.engine import Engine

    print(f"machine: {machine()}; load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    engines = {n: Engine(model_path(n), provider="cpu", max_batch=8) for n in MODELS}
    out: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}

    if not args.skip_cost:
        out["cost"] = []
        for size, confirm in ((int(s), c) for s in args.cost_sizes.split(",") for c in confirms):
            frames = args.frames if size <= 128 else max(8, args.frames // 4)
            passes = args.passes if size <= 128 else max(2, args.passes // 2)
            r = cost(size, frames, passes, engines["rt"], confirm)
            out["cost"].append(r)
            print(f"cost {size}^2, hop confirm {confirm}: {r['atoms_per_frame']:.1f} atoms/frame, {r['samples']} frames:"
                  f" p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms (target at 128^2: p99 <= 2 ms);"
                  f" p50 atoms {r['parts_p50_ms']['atoms']:.3f}, evidence {r['parts_p50_ms']['evidence']:.3f},"
                  f" tracks {r['parts_p50_ms']['tracks']:.3f} ms; p99 atoms {r['parts_p99_ms']['atoms']:.3f},"
                  f" evidence {r['parts_p99_ms']['evidence']:.3f}, tracks {r['parts_p99_ms']['tracks']:.3f} ms",
                  flush=True)

    if not args.skip_trackpy:
        from livedenoise.sim import SimConfig, simulate_movie

        out["trackpy"] = {}
        for dose, seed, hop in ((300, 2, 0.02), (100, 4, 0.1)):
            m = simulate_movie(SimConfig(frames=args.frames, dose=dose, seed=seed, hop_prob=hop))
            den = denoise(engines["rt"], m.noisy, series=9)
            thr = detection_scores(den, m.positions)["threshold"]
            sets = {
                f"truth dose {dose}": [p for p in m.positions.astype(np.float64)],
                f"rt detections dose {dose}": [find_atoms(d, threshold=thr).positions.astype(np.float64) for d in den],
            }
            for name, found in sets.items():
                try:
                    r = compare_trackpy(found, args.max_disp, args.memory)
                except Exception as exc:  # noqa: BLE001 - trackpy refuses crowded subnets (SubnetOversizeException)
                    out["trackpy"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"trackpy vs numpy, {name}: trackpy failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                out["trackpy"][name] = r
                print(f"trackpy vs numpy, {name}: {r['same']}/{r['detections']} links the same"
                      f" ({100 * r['agreement']:.2f} %); differing: {r['differ_ambiguous']} in ambiguous groups"
                      f" ({r['ambiguous_detections']} ambiguous detections), {r['differ_other']} elsewhere;"
                      f" {r['numpy_ms_per_frame']:.3f} vs {r['trackpy_ms_per_frame']:.3f} ms/frame"
                      f" (trackpy / numpy = {r['speed_ratio']:.1f})", flush=True)

    if not args.skip_quality:
        conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
        out["quality"] = quality(conds, args.frames, engines, args.max_disp, args.memory, confirms)

    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
