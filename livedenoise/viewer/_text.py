"""The monitor's words: the banners (waiting, paused, the receiver's error; the guard's warning),
the no-atoms note, the counters (the daemon's part is :func:`livedenoise.protocol.status_parts`,
the same text ``serve`` prints) and the status bar. A mixin of :class:`~._window.MonitorWindow`."""

from __future__ import annotations

import numpy as np

from ..protocol import status_parts
from ._receiver import FramePair, weak_count

WAITING_AFTER_S = 1.5  # nothing received for this long: "waiting for stream…"
NO_ATOMS_AFTER_S = 2.0  # frames for this long and no atoms message: "the daemon publishes no atoms"
NO_ATOMS_NOTE = "the daemon publishes no atoms (serve --atoms)"
_BANNER_STYLE = "QLabel {{ background: {bg}; color: white; font-size: 15pt; padding: 4px; }}"
GUARD_COLOR = "#d08a00"  # amber: a warning about the pictures, not about the stream's health
GUARD_STYLE = f"QLabel {{ background: {GUARD_COLOR}; color: black; font-size: 12pt; padding: 4px; }}"
GUARD_PREFIX = "model does not fit this stream: "


class TextLines:
    """Refreshed at the window's INFO_HZ: banners, note, counters, status bar."""

    def _refresh_banner(self) -> None:
        error = self.receiver.error
        if error is not None:
            text, bg = f"receiver stopped: {error}", "#a03030"
        elif self.waiting:
            idle = self.buffer.idle_for()
            since = "nothing received yet" if idle == float("inf") else f"nothing for {idle:.0f} s"
            text, bg = f"waiting for stream… ({self.address}, {since})", "#b86e00"
        elif self.paused:
            text, bg = "paused: the stream goes on; Space resumes", "#2f5fa0"
        else:
            self.banner.hide()
            return
        self.banner.setText(text)
        self.banner.setStyleSheet(_BANNER_STYLE.format(bg=bg))
        self.banner.show()

    @property
    def guard_warning(self) -> str | None:
        """The guard's message while the daemon's stats say the stream does not fit the model, else None."""
        stats = self.buffer.last_stats
        if stats.get("guard") != "does not fit":
            return None
        message = stats.get("guard_message")
        return message if isinstance(message, str) and message else "the stream does not look like its training data"

    def _refresh_guard(self) -> None:
        """Show the guard's warning over the images while it lasts; hide it when the stream fits again."""
        warning = self.guard_warning
        if warning is None:
            if not self.guard_banner.isHidden():
                self.guard_banner.hide()
            return
        text = GUARD_PREFIX + warning
        if self.guard_banner.text() != text:
            self.guard_banner.setText(text)
        if self.guard_banner.isHidden():
            self.guard_banner.show()

    @property
    def no_atoms(self) -> bool:
        """The no-atoms note is up: frames for NO_ATOMS_AFTER_S and no atoms message, nor an atom finder in stats."""
        return self._atoms_note_action.isVisible()

    def _refresh_atoms_note(self, now: float) -> None:
        """Show the no-atoms note once frames have flowed NO_ATOMS_AFTER_S without an atoms message
        from a daemon whose stats show no atom finder; hide it as soon as atoms arrive."""
        heard = self.buffer.counts["atoms"]
        if heard != self._atoms_heard or self.waiting or not self.buffer.counts["denoised"]:
            self._atoms_heard = heard
            self._no_atoms_since = None
        elif self._no_atoms_since is None:
            self._no_atoms_since = now
        silent = self._no_atoms_since is not None and now - self._no_atoms_since >= NO_ATOMS_AFTER_S
        show = silent and "atoms_frames" not in self.buffer.last_stats
        if show != self._atoms_note_action.isVisible():
            self._atoms_note_action.setVisible(show)

    def _refresh_text(self, now: float) -> None:
        stats = self.buffer.last_stats
        counts = self.buffer.counts

        parts = status_parts(stats)
        lines = [
            f"daemon  {parts['daemon']}",
            f"viewer  raw {counts['raw']}  denoised {counts['denoised']}  stats {counts['stats']}"
            f"  atoms {counts['atoms']}  hops {self.buffer.hops_heard}  bad {counts['malformed']}  drawn {self.frames_drawn}"
            f"  display {self.display_fps(now):.0f} fps",
        ]
        for name in ("atoms", "guard"):  # lines of their own: the window's width stays that of the images
            if name in parts:
                lines.insert(1, f"{name:<7} {parts[name]}")
        frame = self.frame
        if frame is not None:
            css, latency = frame.denoised_header.get("css"), frame.denoised_header.get("latency_ms")
            lines.append(
                f"shown   series {frame.series_id}  image {frame.image_id}"
                + (f"  CSS {css:.3f}" if isinstance(css, float) else "")
                + (f"  latency {latency:.1f} ms" if isinstance(latency, int | float) else "")
                + self._atoms_text(frame)
                + ("  (paused)" if self.paused else "")
            )
        self.counters.setText("\n".join(lines))
        self.status.setText(
            f"model {stats.get('model', '–')} · provider {stats.get('provider', '–')}"
            f" · stream {self.address} · series {'–' if frame is None else frame.series_id}"
        )

    def _atoms_text(self, frame: FramePair) -> str:
        atoms = self.atoms_shown
        if atoms is None:
            return ""
        weak = weak_count(atoms)
        text = f"  atoms {atoms.count}" + ("" if np.isnan(weak) else f" ({weak:.0f} weak)")
        if atoms.image_id == frame.image_id:
            return text
        return f"{text} (of image {atoms.image_id})"
