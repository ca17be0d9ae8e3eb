"""Background pre-encoding: windows around the image's objects are encoded while the user is idle.

:class:`PreEncoder` runs :func:`~napari_sam_micro.plane_jobs.preencode_job` in its own
worker, separate from the Annotator's (model loading, the plane's embedding, a prompt's window).
It starts once the plane's embedding is ready, nearest the view centre first, and steps aside the
moment the user prompts: :meth:`pause` asks the worker to stop at its next yield (between two
windows), so a prompt never waits behind the queue; :meth:`resume` starts it again when the
Annotator is idle (windows already encoded are skipped, they are in the cache).
"""

from __future__ import annotations

import logging

from ..plane_jobs import preencode_job
from .workers import start_job

__all__ = ["PreEncoder"]

_log = logging.getLogger(__name__)


class PreEncoder:
    """Owns the pre-encoding worker of one Annotator.

    Attributes
    ----------
    enabled : bool
        Pre-encode at all (a setting of the widget).
    windows_encoded : int
        Windows this pre-encoder has encoded (all runs).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self.worker = None
        self.windows_encoded = 0
        self._session = None
        self._generation = None
        self._centre = None
        self._finished_for = None  # generation whose objects are all pre-encoded
        self._resume_pending = False

    @property
    def running(self) -> bool:
        """A pre-encoding worker is alive."""
        return self.worker is not None

    def start(self, session, centre_rc=None) -> bool:
        """Pre-encode ``session``'s plane (nearest ``centre_rc`` first) unless already running or done.

        Returns
        -------
        bool
            True when a worker was started.
        """
        if not self.enabled or session is None or not session.has_image:
            return False
        generation = session.generation
        if self.worker is not None or self._finished_for == (id(session), generation):
            return False
        self._session, self._generation, self._centre = session, generation, centre_rc
        job = preencode_job(session, centre_rc)
        self.worker = start_job(
            job,
            on_result=lambda n: self._on_done(n, session, generation),
            on_error=lambda err: _log.info("pre-encoding stopped: %s", err),
            on_finished=self._on_finished,
            context="Pre-encoding object windows",
        )
        return True

    def _on_done(self, count, session, generation) -> None:
        self.windows_encoded += int(count or 0)
        if generation == session.generation:
            self._finished_for = (id(session), generation)

    def _on_finished(self) -> None:
        self.worker = None
        if self._resume_pending:
            self._resume_pending = False
            self.resume()

    def pause(self) -> None:
        """Ask the worker to stop at its next yield (the user prompted, or the image changed)."""
        self._resume_pending = False
        if self.worker is not None:
            self.worker.quit()

    def resume(self) -> bool:
        """Start again where it stopped, for the same session and plane (encoded windows are skipped).

        When the paused worker has not stopped yet, it starts again as soon as it has.
        """
        session = self._session
        if session is None or session.generation != self._generation:
            return False
        if self.worker is not None:
            self._resume_pending = True
            return False
        return self.start(session, self._centre)

    def stop(self) -> None:
        """Stop and forget the session (image or model changed, widget closed)."""
        self.pause()
        self._session = None
        self._generation = None
