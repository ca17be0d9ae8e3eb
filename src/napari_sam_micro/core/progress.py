"""Progress reports of long work written as generators.

Long work (encoding, automatic segmentation, downloads, evaluation) is a generator that yields
:class:`Progress` and returns its result. The Qt edge runs it in a worker; tests and the CLI call
:func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Progress", "drain", "Job"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Parameters
    ----------
    done, total : int
        Units of work done so far and in all (``total == 0`` when unknown).
    message : str
        Short text for a progress bar.
    """

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """``done / total`` in ``[0, 1]`` (0 when the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total else 0.0


#: A long job: yields :class:`Progress`, returns its result.
Job = Generator[Progress, None, T]


def drain(job: Generator[Progress, None, T], on_progress: Callable[[Progress], Any] | None = None) -> T:
    """Run ``job`` to its end synchronously and return its result.

    Parameters
    ----------
    job : generator
        Yields :class:`Progress`, returns the result.
    on_progress : callable, optional
        Called with each :class:`Progress`.
    """
    while True:
        try:
            report = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(report)
