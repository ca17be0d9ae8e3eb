"""Long jobs on the current plane of an :class:`~napari_sam_micro.session.AnnotationSession`.

Pre-encoding, the seeded everything mode and refining existing labels are decode strategies of
:mod:`napari_sam_micro.core` (:mod:`~napari_sam_micro.core.preencode`,
:mod:`~napari_sam_micro.core.seeded`, :mod:`~napari_sam_micro.core.refine`); the functions here
bind them to a session's plane: its :class:`~napari_sam_micro.core.decoding.DecodeContext`, its
encoder and its generation, so that a job started for one image stops when the image changes.
The widgets, the evaluation, the ``segment`` command and the Python API share them. Each returns
a generator that yields :class:`~napari_sam_micro.core.progress.Progress` (a worker runs it, or
:func:`~napari_sam_micro.core.progress.drain`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core.errors import ImageError
from .core.preencode import nearest_first, plan_object_windows, preencode_windows_job
from .core.progress import Job, Progress
from .core.refine import RefinedObject, refine_objects_job
from .core.seeded import SeededSegmentation, seeded_segmentation_job
from .session import AnnotationSession

__all__ = ["preencode_job", "segment_seeds_job", "refine_job"]


def _require_image(session: AnnotationSession, what: str) -> int:
    """The session's generation; ``ImageError`` without a plane."""
    if not session.has_image:
        raise ImageError(f"Choose an image before {what}.")
    return session.generation


def preencode_job(session: AnnotationSession, centre_rc: Sequence[float] | None = None, max_windows: int = 200) -> Job[int]:
    """Encode the windows around the plane's detected objects, nearest ``centre_rc`` (row, col) first.

    Objects are found as in everything mode and covered by few windows
    (:func:`~napari_sam_micro.core.preencode.plan_object_windows`, planned once per image); a
    later prompt on such an object is decoded without encoding. For an idle, cancellable,
    low-priority worker: it yields between windows, stops when the image changes, encodes at
    most ``max_windows`` and returns how many it encoded (0 for whole-plane models).
    """
    generation = _require_image(session, "pre-encoding it")
    planes = session.plane_embeddings
    if not session.clicks_in_windows:
        return _done(0)

    def run():
        yield Progress(0, 0, "Finding objects to pre-encode")
        ctx = session.decode_context()
        # a large plane is planned in the region around the centre only (never read whole)
        planned = planes.object_windows(
            generation, lambda: plan_object_windows(ctx, *planes.region_image(centre_rc, generation))
        )
        order = nearest_first(planned, centre_rc, session.image_hw)[:max_windows]
        encode = lambda window: planes.ensure_job(window, generation)  # noqa: E731
        return (yield from preencode_windows_job(ctx, order, encode, lambda: generation == session.generation))

    return run()


def segment_seeds_job(session: AnnotationSession, seeds_rc, **options) -> Job[SeededSegmentation]:
    """Seeded everything mode on the session's plane: :func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`.

    ``seeds_rc`` ``(N, 2)`` (row, col) object centres (e.g. :func:`~napari_sam_micro.core.seeds.find_seeds`);
    ``options`` as that function's. Windows are encoded (and cached) here; the preview is not touched.
    """
    generation = _require_image(session, "segmenting it")
    planes = session.plane_embeddings
    return seeded_segmentation_job(
        session.decode_context(),
        seeds_rc,
        planes.normalized_plane(generation),
        session.embeddings_job,
        generation=generation,
        check=lambda: planes.check_generation(generation),
        **options,
    )


def refine_job(session: AnnotationSession, labels: np.ndarray, ids=None, **options) -> Job[list[RefinedObject]]:
    """Re-segment objects of a label plane of the session's image: :func:`~napari_sam_micro.core.refine.refine_objects_job`.

    ``labels`` is ``(H, W)`` int (not modified); ``ids`` the objects (default all); ``options``
    ``strategy``, ``box_pad``, ``clicks``. Windows are encoded (and cached) in this job.
    """
    generation = _require_image(session, "refining its labels")
    planes = session.plane_embeddings
    check = lambda: planes.check_generation(generation)  # noqa: E731
    return refine_objects_job(session.decode_context(), labels, session.embeddings_job, ids, check=check, **options)


def _done(value):
    """A job that yields nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
