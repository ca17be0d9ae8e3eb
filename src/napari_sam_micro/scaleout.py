"""Running a batch here or on a Dask distributed cluster (``segment --workers N / --scheduler``).

One task per input image (:func:`napari_sam_micro.batch.run_one`): the task reads the image,
segments it and writes its outputs itself, so results reach the disk as each task finishes and
nothing large travels back to the client. An image whose planes are larger than the tile size is
instead split into one task per tile (:func:`napari_sam_micro.batch.segment_tile_task`: the worker
reads its tile from the file); the client stitches the tiles in plan order into a zarr canvas on
disk and writes the outputs, so a large image is spread over all workers. Each worker process
loads the model once (a per-process :class:`~napari_sam_micro.models.registry.ModelStore`) and
keeps it for all its tasks.

* ``workers=N``: a ``dask.distributed.LocalCluster`` of N worker processes, each running one task
  at a time with its encoder on ``cores // N`` threads (``NAPARI_SAM_MICRO_THREADS``), started and closed here.
* ``scheduler=ADDRESS``: an existing cluster (e.g. dask-jobqueue's ``SLURMCluster``, see
  docs/batch.md); its workers need napari-sam-micro installed and the files reachable at the same
  paths.

A task that raises (a crashed worker, an unexpected error) is retried once (``retries=1``), then
reported as failed with its error; an input that cannot be read is reported without a retry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .batch import BatchSettings, discover_inputs, is_large, open_input, run_one, run_one_job, segment_tile_task
from .core.progress import Job, Progress

__all__ = ["run_batch_job", "TASK_RETRIES", "THREAD_ENV", "thread_env", "restore_thread_env"]

#: Retries of a task that raised (e.g. its worker died) before it is reported as failed.
TASK_RETRIES = 1


def _summary(results: list[dict], settings: BatchSettings, seconds: float) -> dict:
    by_status = {s: [r for r in results if r["status"] == s] for s in ("done", "skipped", "failed")}
    return {
        "model": settings.model,
        "images": results,
        "done": len(by_status["done"]),
        "skipped": len(by_status["skipped"]),
        "failed": len(by_status["failed"]),
        "objects": sum(r.get("objects", 0) for r in by_status["done"]),
        "seconds": round(seconds, 3),
    }


def run_batch_job(items, out_dir, settings: BatchSettings, *, workers: int = 0, scheduler: str | None = None, on_result=None) -> Job[dict]:
    """Segment every image named by ``items`` into ``out_dir``; a job returning the batch summary.

    Parameters
    ----------
    items : list of str
        Files, folders, glob patterns (see :func:`~napari_sam_micro.batch.discover_inputs`).
    out_dir : path-like
        Created if missing.
    settings : BatchSettings
    workers : int
        0: here, one image after the other; N: a Dask ``LocalCluster`` of N worker processes.
    scheduler : str, optional
        Address of a running Dask scheduler (used instead of ``workers``).
    on_result : callable, optional
        Called with each image's summary as it finishes (e.g. to print a failure at once).

    Returns
    -------
    dict
        ``images`` (one summary per input, in input order; failures carry ``error``), ``done``,
        ``skipped``, ``failed``, ``objects``, ``seconds``, ``model``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    paths, problems = discover_inputs(items)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = on_result or (lambda r: None)
    results = [{"input": item, "status": "failed", "error": msg} for item, msg in problems]
    for r in results:
        report(r)
    if paths and (workers or scheduler):
        found = yield from _cluster_job(paths, out_dir, settings, workers, scheduler, report)
    else:
        found = {}
        for k, path in enumerate(paths):
            yield Progress(k, len(paths), path.name)
            found[k] = run_one(path, out_dir, settings)
            report(found[k])
    yield Progress(len(paths), len(paths), "done")
    results += [found[k] for k in range(len(paths))]
    return _summary(results, settings, time.perf_counter() - start)


#: Thread budgets that starting Dask workers writes into this (the client's) process environment too.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env() -> dict:
    """This process's :data:`THREAD_ENV` values (None where unset), for :func:`restore_thread_env`."""
    return {key: os.environ.get(key) for key in THREAD_ENV}


def restore_thread_env(saved: dict) -> None:
    """Put back thread budgets saved by :func:`thread_env`: distributed's nanny sets them to 1 in
    ``os.environ`` when it spawns workers, which would leave processes started later from here
    (and libraries that read them when first loaded) on one thread."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _local_cluster(workers: int):
    from distributed import LocalCluster

    threads = max(1, (os.cpu_count() or 1) // int(workers))
    # One task at a time per worker, its encoder on the worker's share of the cores (the runtimes read
    # NAPARI_SAM_MICRO_THREADS, see models.onnx_encoder.physical_cores; torch and BLAS read OMP / MKL,
    # which the nanny would set to 1). Two tasks per worker, each with all the cores' threads, ran 4
    # threads on 2 cores.
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "NAPARI_SAM_MICRO_THREADS": str(threads)}
    return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None, env=env)


def _cluster_job(paths, out_dir, settings, workers, scheduler, report) -> Job[dict]:
    try:
        from distributed import Client, as_completed
    except ImportError as err:  # pragma: no cover - distributed is in the "batch" extra
        from .core.errors import UserInputError

        raise UserInputError("--workers / --scheduler need dask distributed: pip install 'napari-sam-micro[batch]'.") from err
    saved_env = thread_env()
    cluster = None if scheduler else _local_cluster(workers)
    restore_thread_env(saved_env)
    found: dict[int, dict] = {}
    try:
        with Client(scheduler or cluster) as client:
            large = [k for k, p in enumerate(paths) if _is_large(p, settings)]
            futures = {
                client.submit(run_one, str(p), str(out_dir), settings, retries=TASK_RETRIES, pure=False, key=f"segment-{k}-{p.name}"): k
                for k, p in enumerate(paths)
                if k not in large
            }
            yield Progress(0, len(paths), "tasks sent")
            for k in large:  # their tiles queue behind the image tasks and run on every worker
                found[k] = yield from _large_image_job(client, paths[k], out_dir, settings)
                report(found[k])
            for fut in as_completed(futures):
                k = futures[fut]
                found[k] = _result(fut, paths[k])
                report(found[k])
                yield Progress(len(found), len(paths), Path(paths[k]).name)
    finally:
        if cluster is not None:
            cluster.close()
        restore_thread_env(saved_env)
    return found


def _is_large(path, settings) -> bool:
    try:
        return is_large(open_input(path), settings)
    except Exception:  # an unreadable file: its image task reports the error
        return False


def _large_image_job(client, path, out_dir, settings) -> Job[dict]:
    """One large image: its tiles as tasks, stitched and written here."""

    def tile_runner(src: str, index):
        def run_tiles(tiles, config, options):
            futs = [
                client.submit(segment_tile_task, src, tuple(index), t, settings, config, options, retries=TASK_RETRIES, pure=False)
                for t in tiles
            ]
            for t, fut in zip(tiles, futs):
                yield Progress(0, 0, f"{Path(src).name}: waiting for tile {t.index + 1}")
                labels, table = fut.result()  # in plan order: the stitching is the same as here
                fut.release()
                yield t, labels, table

        return run_tiles

    try:
        return (yield from run_one_job(path, out_dir, settings, tile_runner))
    except Exception as err:  # a tile failed after its retry (e.g. KilledWorker)
        return {"input": str(path), "status": "failed", "error": f"{type(err).__name__}: {err} (after {TASK_RETRIES} retry)"}


def _result(fut, path) -> dict:
    if fut.status == "finished":
        return fut.result()
    err = fut.exception()
    return {"input": str(path), "status": "failed", "error": f"{type(err).__name__}: {err} (after {TASK_RETRIES} retry)"}
