"""Run long jobs (generators yielding :class:`~napari_sam_micro.core.progress.Progress`) off the GUI thread.

A job is wrapped in a superqt :class:`~superqt.utils.GeneratorWorker` (the class behind
``napari.qt.threading``): each yielded ``Progress`` reaches the GUI thread through the worker's
``yielded`` signal, ``worker.quit()`` cancels it at its next yield, and the job's return value
arrives through ``returned``.

Exceptions never escape as tracebacks: a job's exception is caught inside the worker and handed to
``on_error`` on the GUI thread (default: :func:`notify_exception`, a napari notification written
for the user). superqt would otherwise turn a ``RuntimeError`` (and so
:class:`~napari_sam_micro.core.errors.ModelUnavailableError`) into a silent warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from superqt.utils import GeneratorWorker

from ..core.errors import ModelUnavailableError, UserInputError
from ..core.progress import Progress

__all__ = ["JobFailure", "start_job", "notify_exception"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFailure:
    """What a worker returns when its job raised: the exception, delivered on the GUI thread."""

    error: BaseException


def notify_exception(error: BaseException, context: str = "") -> None:
    """Show ``error`` as a napari notification written for the user.

    ``UserInputError`` → warning with its message; ``ModelUnavailableError`` → error with its
    message; anything else → error naming ``context`` and the exception (also logged with its
    traceback).

    Parameters
    ----------
    error : BaseException
        The exception.
    context : str
        What was being done ("Computing the image embedding"), used for unexpected errors.
    """
    from napari.utils.notifications import show_error, show_warning

    if isinstance(error, UserInputError):
        show_warning(str(error))
    elif isinstance(error, ModelUnavailableError):
        show_error(str(error))
    else:
        _log.error("%s failed", context or "A background job", exc_info=(type(error), error, error.__traceback__))
        what = context or "The operation"
        show_error(f"{what} failed: {type(error).__name__}: {error}")


def _drive(job: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Run ``job`` inside the worker; turn its exception into a :class:`JobFailure` result."""
    try:
        result = yield from job
    except Exception as err:  # noqa: BLE001 - delivered to the GUI thread, shown to the user
        return JobFailure(err)
    return result


def start_job(
    job: Generator[Progress, None, Any],
    *,
    on_progress: Callable[[Progress], Any] | None = None,
    on_result: Callable[[Any], Any] | None = None,
    on_error: Callable[[BaseException], Any] | None = None,
    on_aborted: Callable[[], Any] | None = None,
    on_finished: Callable[[], Any] | None = None,
    context: str = "",
    start: bool = True,
) -> GeneratorWorker:
    """Run ``job`` in a worker thread and wire its signals.

    Parameters
    ----------
    job : generator
        Yields :class:`Progress`, returns the result. Cancelled between yields by ``worker.quit()``.
    on_progress : callable, optional
        Called on the GUI thread with each ``Progress``.
    on_result : callable, optional
        Called on the GUI thread with the job's return value (not called when it raised or was
        cancelled).
    on_error : callable, optional
        Called on the GUI thread with the job's exception; default :func:`notify_exception`.
    on_aborted : callable, optional
        Called when the job was cancelled.
    on_finished : callable, optional
        Called last, whatever happened.
    context : str
        What the job does, for error messages.
    start : bool
        Start the worker now (else call ``worker.start()``).

    Returns
    -------
    superqt.utils.GeneratorWorker
    """

    def _returned(value):
        if isinstance(value, JobFailure):
            if on_error is not None:
                on_error(value.error)
            else:
                notify_exception(value.error, context)
        elif on_result is not None:
            on_result(value)

    worker = GeneratorWorker(_drive, job)
    if on_progress is not None:
        worker.yielded.connect(lambda p: on_progress(p) if isinstance(p, Progress) else None)
    worker.returned.connect(_returned)
    # Errors raised by the worker machinery itself (not by the job).
    worker.errored.connect(on_error if on_error is not None else (lambda e: notify_exception(e, context)))
    if on_aborted is not None:
        worker.aborted.connect(on_aborted)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    if start:
        worker.start()
    return worker
