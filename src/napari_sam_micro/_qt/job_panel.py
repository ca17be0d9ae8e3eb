"""One panel for a widget's background job: run button, cancel, progress bar, status line.

The Annotator, Everything mode and Refine labels share it. A job is a generator yielding
:class:`~napari_sam_micro.core.progress.Progress` (:func:`._qt.workers.start_job` runs it in a
worker); the panel runs one at a time, shows its progress and message, enables *Cancel* while it
runs, and calls the widget back on the GUI thread with the result, the error or the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core.progress import Progress
from .workers import notify_exception, start_job

__all__ = ["JobPanel"]


class JobPanel(QWidget):
    """Run / Cancel buttons, a progress bar and a status line for one job at a time.

    Parameters
    ----------
    run_text : str
        Label of the run button.
    run_tooltip : str
    status : str
        First status line.
    parent : QWidget, optional

    Attributes
    ----------
    run_button, cancel_button : QPushButton
        The widget connects ``run_button.clicked`` to what starts its job; Cancel is wired here.
    progress : QProgressBar
    status : QLabel
    worker : GeneratorWorker or None
        The running job's worker.
    """

    def __init__(self, run_text: str = "Run", run_tooltip: str = "", status: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.worker = None
        self.run_button = QPushButton(run_text, self)
        self.run_button.setToolTip(run_tooltip)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop the running job at its next step; its result is discarded.")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(True)
        self.status = QLabel(status, self)
        self.status.setWordWrap(True)
        self.reset_progress(0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel)

    def is_busy(self) -> bool:
        """A job is running."""
        return self.worker is not None

    def start(
        self,
        job,
        *,
        on_result: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        on_finished: Callable[[bool], Any] | None = None,
        context: str = "",
        status: str | None = None,
    ):
        """Run ``job`` in a worker; returns the worker.

        Parameters
        ----------
        on_result : callable, optional
            The job's return value (not called after an error or a cancel).
        on_error : callable, optional
            The job's exception (default: the status line and a notification).
        on_finished : callable, optional
            ``on_finished(aborted)``, last, after the panel is reset.
        context : str
            What the job does, for error messages.
        status : str, optional
            Status line while it runs.
        """
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_progress(0, 0)
        if status is not None:
            self.status.setText(status)

        def failed(err):
            if on_error is not None:
                on_error(err)
            else:
                self.status.setText(str(err))
                notify_exception(err, context)

        def finished():
            aborted = self.worker is not None and self.worker.abort_requested
            self.worker = None
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.reset_progress(0 if aborted else 1)
            if aborted:
                self.status.setText("Cancelled.")
            if on_finished is not None:
                on_finished(aborted)

        self.worker = start_job(
            job, on_progress=self.show_progress, on_result=on_result, on_error=failed, on_finished=finished, context=context
        )
        return self.worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelling…")

    def show_progress(self, report: Progress) -> None:
        """Show a job's :class:`Progress` (busy indicator when its total is unknown)."""
        self.set_progress(report.done, report.total)
        if report.message:
            self.progress.setFormat(f"{report.message} %p%" if report.total > 0 else report.message)

    def set_progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps; ``total <= 0`` shows the busy indicator."""
        if total <= 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(done))

    def reset_progress(self, value: int = 0) -> None:
        """An idle bar: empty (0) or full (1)."""
        self.progress.setRange(0, 1)
        self.progress.setValue(int(value))
        self.progress.setFormat("%p%")
