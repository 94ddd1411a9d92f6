"""A ``stats`` message in words: the one text that ``serve``'s console and the monitor both show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def status_parts(stats: Mapping[str, Any]) -> dict[str, str]:
    """The daemon's state, by part: ``daemon`` always, ``atoms`` and ``guard`` when those stages run.

    A value that is missing shows as ``–``; one of an unexpected type (a daemon of another version)
    as it came.
    """

    def stat(key: str, fmt: str = "{}") -> str:
        value = stats.get(key)
        try:
            return "–" if value is None else fmt.format(value)
        except (TypeError, ValueError):
            return str(value)

    parts = {
        "daemon": f"received {stat('received')}  denoised {stat('denoised')}  dropped {stat('dropped')}"
        f"  malformed {stat('malformed')}  failed {stat('failed')}  queue {stat('queue_depth')}"
        f"  | in {stat('fps_in', '{:.1f}')} fps  out {stat('fps_out', '{:.1f}')} fps"
        f"  p50 {stat('latency_ms_p50', '{:.1f}')} ms  p99 {stat('latency_ms_p99', '{:.1f}')} ms"
        f"  CSS {stat('css', '{:.3f}')}",
    }
    if "atoms_frames" in stats or "atoms_last" in stats:
        atoms = (
            f"newest {stat('atoms_last')}  finder p50 {stat('atoms_ms_p50', '{:.2f}')} ms"
            f"  skipped {stat('atoms_skipped')}  failed {stat('atoms_failed')}"
        )
        if "atoms_weak_last" in stats:
            atoms += f"  weak {stat('atoms_weak_last')}"
        if "tracks_live" in stats:
            atoms += f"  tracks {stat('tracks_live')} (resets {stat('tracks_resets')})"
        if "hops" in stats:
            atoms += f"  hops {stat('hops')}"
        parts["atoms"] = atoms
    if "guard" in stats:
        guard = stat("guard")
        if stats.get("score_db") is not None:
            guard += (f"  score {stat('score_db', '{:+.1f}')} dB, best filter {stat('score_filter_db', '{:+.1f}')} dB"
                      f" ({stat('score_frames')} frames)")
        if stats.get("guard_density_ratio") is not None:
            guard += f"  density x{stat('guard_density_ratio', '{:.2g}')}"
        if "unexplained_mean" in stats:
            guard += (f"  unexplained {stat('unexplained_mean', '{:.1f}')} counts/frame"
                      f" ({stat('unexplained_fraction', '{:.1%}')} of the atomic counts)")
        parts["guard"] = guard
    return parts


def status_line(stats: Mapping[str, Any]) -> str:
    """:func:`status_parts` on one line (a console, a log)."""
    return " | ".join(f"{name} {text}" for name, text in status_parts(stats).items())
