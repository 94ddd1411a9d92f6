"""The atoms over the denoised frame (``serve --atoms``): rings in the colour of their evidence,
their tracks' trails, and fading arrows for the hops.

The rings are one :class:`pyqtgraph.ScatterPlotItem` of fixed-size rings (key O or the *atoms*
box toggles them; key W or the *weak* box hides the weakly supported ones), the trails over the
last TRAIL_FRAMES frames one :class:`pyqtgraph.PlotCurveItem`, and every hop of the last HOP_FADE_S
seconds an arrow, fading out (:class:`~._panels.HopMarkers`). Each draw tick only compares the
shown frame's ids and the buffer's atoms counter with the last ones; rings and trails are replaced
only when the atoms to show change, the hop markers only while one is fading (HOP_FADE_HZ). The
numbers behind the colours and trails are :mod:`._overlay` (no Qt). A mixin of
:class:`~._window.MonitorWindow`.
"""

from __future__ import annotations

import time

import numpy as np

from ._overlay import NO_EVIDENCE, PALETTE, WEAK_Z, evidence_index, fade, trails, weak_mask

ATOM_PEN = NO_EVIDENCE  # the rings of atoms without evidence: red reads on every colour map offered
ATOM_SIZE = 11  # ring diameter in screen pixels, whatever the zoom
TRAIL_FRAMES = 10  # a track's trail: its positions in the last this many frames
TRAIL_PEN = (255, 220, 0, 230)  # yellow, over the rings (a jittering atom's trail lies inside its ring)
HOP_FADE_S = 1.0  # a hop's arrow fades out over this many seconds after it arrived
HOP_FADE_HZ = 20  # fading arrows are redrawn this often (new hops at once)
HOP_COLOR = (255, 110, 0)  # orange arrows: apart from the rings' ramps and the trails
MAX_HOP_MARKERS = 512  # the newest hops drawn at once (a noise storm must not stall the GUI)


class AtomsOverlay:
    """The operator's toggles and the per-tick updates of the rings, trails and hop arrows."""

    def set_show_atoms(self, show: bool) -> None:
        """Draw the atoms (``serve --atoms``) over the denoised frame, or not."""
        self.show_atoms = bool(show)
        if self.atoms_box.isChecked() != self.show_atoms:
            self.atoms_box.setChecked(self.show_atoms)
        for item in (self.atoms_overlay, self.trails, self.hop_markers):
            item.setVisible(self.show_atoms)
        self._update_overlay()

    def set_show_weak(self, show: bool) -> None:
        """Ring the weakly supported atoms too (evidence below the daemon's ``weak_z``), or hide them."""
        self.show_weak = bool(show)
        if self.weak_box.isChecked() != self.show_weak:
            self.weak_box.setChecked(self.show_weak)
        self._update_overlay()

    def _update_overlay(self) -> None:
        """Show the atoms of the frame on screen (or of the frame just before, until they arrive).

        O(1) when neither the frame on screen nor the atoms received changed since the last call.
        """
        frame = self.frame
        ids = None if frame is None or frame.denoised is None else (frame.series_id, frame.image_id)
        key = (ids, self.buffer.atoms_version, self.show_atoms, self.show_weak)
        if key == self._overlay_key:
            return
        self._overlay_key = key
        atoms = self.buffer.atoms_for(*ids) if ids is not None and self.show_atoms else None
        if atoms is self.atoms_shown and key[2:] == self._overlay_drawn:
            return
        self.atoms_shown, self._overlay_drawn = atoms, key[2:]
        if atoms is None or len(atoms) == 0:
            self.atoms_drawn = np.zeros(0, bool)
            self.atoms_overlay.clear()
            self.trails.setData([], [])
            return
        weak_z = WEAK_Z if atoms.weak_z is None else atoms.weak_z
        drawn = np.ones(len(atoms), bool)
        if atoms.evidence is not None and not self.show_weak:
            drawn = ~weak_mask(atoms.evidence, weak_z)
        self.atoms_drawn = drawn
        # [x, y] has pixel centres at integers; the image item puts pixel (i, j) on [j, j+1] x [i, i+1]
        pos = atoms.positions[drawn] + np.float32(0.5)
        if atoms.evidence is None:
            self.atoms_overlay.setData(pos, len(PALETTE))
        else:
            self.atoms_overlay.setData(pos, evidence_index(atoms.evidence[drawn], weak_z))
        history = self.buffer.atoms_history(atoms.series_id, atoms.image_id, TRAIL_FRAMES)
        points, connect = trails(history, atoms, TRAIL_FRAMES, keep=drawn)
        points = points + np.float32(0.5)
        self.trails.setData(points[:, 0], points[:, 1], connect=connect)

    def _update_hops(self, now: float | None = None) -> None:
        """Arrows for the hops of the shown series received in the last HOP_FADE_S seconds, fading.

        O(1) when no hop arrived since the last call and none is still fading.
        """
        frame = self.frame
        series = None if frame is None else frame.series_id
        key = (series, self.buffer.hops_version, self.show_atoms)
        now = time.monotonic() if now is None else now
        if key == self._hops_key and (not self._hops_live or now < self._hops_next):
            return
        self._hops_key, self._hops_next = key, now + 1.0 / HOP_FADE_HZ
        recent = self.buffer.recent_hops(series, now, HOP_FADE_S) if self.show_atoms and series is not None else []
        recent = [(age, hops) for age, hops in recent if len(hops)]
        if not recent:
            self._hops_live = False
            if len(self.hop_markers):
                self.hop_markers.set_markers(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
            return
        self._hops_live = True
        before = np.concatenate([h.before for _, h in recent])[-MAX_HOP_MARKERS:]
        after = np.concatenate([h.after for _, h in recent])[-MAX_HOP_MARKERS:]
        alpha = np.concatenate([np.full(len(h), fade(age, HOP_FADE_S)) for age, h in recent])[-MAX_HOP_MARKERS:]
        self.hop_markers.set_markers(before + 0.5, after + 0.5, alpha)
