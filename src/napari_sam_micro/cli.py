"""Command line: ``napari-sam-micro evaluate``, ``metrics`` and ``segment``.

::

    napari-sam-micro evaluate --model micro-tiny --data ../shared/data --split val --limit 5 --json out.json
    napari-sam-micro evaluate --model micro-tiny --data ../shared/data --split val --split-by source --limit 5
    napari-sam-micro metrics gt_labels.tif pred_labels.tif --json
    napari-sam-micro segment images/ scan.ome.zarr "plate/*.tif" --out results/ --workers 2 --json summary.json

``evaluate`` prompts every ground-truth object as a simulated user (see
:mod:`napari_sam_micro.evaluation`) and prints a table of mean IoU per prompt kind and modality,
with the untrained LiteMedSAM and the inscribed-ellipse baselines, each with a 95 % bootstrap interval
over images (``--split-by source`` holds out whole acquisitions, see docs/models.md); a plain-text progress bar goes
to stderr. With ``--json`` the output file is checked before the run and rewritten (atomically)
after every image, so an interrupted run keeps its results; an image that cannot be evaluated is
skipped and named, and the exit code is then 2. ``metrics`` scores a predicted label image against ground truth
(:func:`napari_sam_micro.core.metrics.instance_scores`).

``segment`` runs the everything mode on every image (see :mod:`napari_sam_micro.batch`; large
planes tile by tile) and writes ``<name>_labels.tif`` (OME-Zarr input: ``<name>_labels.ome.zarr``)
and ``<name>_labels.csv`` into ``--out``; finished images are skipped on a rerun; ``--workers N`` /
``--scheduler ADDRESS`` run the images on Dask distributed (:mod:`napari_sam_micro.scaleout`). With
``--prompts FILE`` (a CSV or GeoJSON of boxes and points, :mod:`napari_sam_micro.core.prompt_files`)
it segments those objects instead (:func:`napari_sam_micro.segmentation.prompted_job`). An
image that fails is named on an ``error:`` line at once, the others go on, and the exit code is 2.

Every error the user can fix is printed as ``error: ...`` (naming the file) with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from .core.errors import ModelUnavailableError, UserInputError

__all__ = ["main", "build_parser"]


def _bar(stream):
    last = [None]

    def show(report) -> None:
        width = 30
        filled = int(round(width * report.fraction))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {report.done}/{report.total} {report.message}"[:119]
        if line != last[0]:
            stream.write("\r" + line.ljust(120))
            stream.flush()
            last[0] = line

    return show


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _check_output(path: str) -> Path:
    """Fail before a long run, not after it, when the ``--json`` file cannot be written."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserInputError(f"--json {out} is a folder; give a file name, e.g. {out / 'result.json'}.")
    if not out.parent.is_dir():
        raise UserInputError(f"--json {out}: the folder {out.parent} does not exist.")
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise UserInputError(f"--json {out}: cannot write in the folder {out.parent} ({err.strerror or err}).") from err
    return out


def _evaluate(args) -> int:
    from .core.export import write_text_atomic
    from .core.progress import drain
    from .evaluation import PROMPT_KINDS, evaluate_job, format_table

    out = _check_output(args.json) if args.json else None

    def save(result: dict) -> None:  # after every image: an interrupted run keeps what it did
        write_text_atomic(out, json.dumps(_jsonable(result), indent=1))

    kinds = tuple(args.prompts.split(",")) if args.prompts else PROMPT_KINDS
    baselines = tuple(b for b in args.baselines.split(",") if b) if args.baselines is not None else ("litemedsam", "ellipse")
    job = evaluate_job(
        args.model,
        args.data,
        prompt_kinds=kinds,
        n_clicks=args.clicks,
        everything=args.everything,
        split=args.split,
        limit=args.limit,
        max_objects=args.max_objects,
        baselines=baselines,
        device=args.device,
        everything_images=args.everything_images,
        modalities=tuple(args.modalities.split(",")) if args.modalities else None,
        checkpoint=args.checkpoint,
        on_image=save if out is not None else None,
        split_by=args.split_by,
        split_touching=args.split_touching,
        fewer_windows=args.fewer_windows,
    )
    result = drain(job, None if args.quiet else _bar(sys.stderr))
    if not args.quiet:
        sys.stderr.write("\n")
    print(format_table(result))
    if out is not None:
        save(result)
        print(f"wrote {out}")
    return _report_skipped(result, out)


def _report_skipped(result: dict, out: Path | None) -> int:
    """``error:`` lines for the images the evaluation skipped; exit code 2 when there are any."""
    skipped = result.get("skipped", [])
    if not skipped:
        return 0
    n = len(skipped) + len(result.get("images", []))
    kept = f"; the results of the others are in {out}" if out is not None else ""
    print(f"error: {len(skipped)} of {n} images could not be evaluated{kept}:", file=sys.stderr)
    for item in skipped:
        print(f"  {item['image']}: {item['error']}", file=sys.stderr)
    return 2


def _metrics(args) -> int:
    import numpy as np

    from .core.export import read_labels
    from .core.metrics import check_label_image, instance_scores

    gt = check_label_image(read_labels(args.gt), f"The ground truth {args.gt}")
    pred = check_label_image(read_labels(args.pred), f"The prediction {args.pred}")
    if gt.shape != pred.shape:
        raise UserInputError(f"The label images differ in shape: {gt.shape} (ground truth) vs {pred.shape} (prediction).")
    scores = instance_scores(np.asarray(gt), np.asarray(pred))
    if args.json:
        out = {k: v for k, v in scores.items() if k not in ("matches", "per_object_iou", "best_iou")}
        out["per_object_iou"] = scores["per_object_iou"]
        print(json.dumps(_jsonable(out), indent=1))
    else:
        print(f"objects: {scores['n_gt']} ground truth, {scores['n_pred']} predicted")
        print(f"IoU 0.5: TP {scores['tp']}  FP {scores['fp']}  FN {scores['fn']}")
        print(f"precision {scores['precision']:.3f}  recall {scores['recall']:.3f}  F1 {scores['f1']:.3f}")
        print(f"mean matched IoU {scores['mean_matched_iou']:.3f}  mAP(0.5:0.95) {scores['map']:.3f}")
    return 0


def _segment_settings(args):
    from .batch import BatchSettings
    from .core.automatic import AmgParams
    from .core.preprocess import PreprocessConfig
    from .segmentation import EverythingOptions

    grid = AmgParams(pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh)
    options = EverythingOptions(
        mode=args.mode, min_distance=args.min_distance, iou_floor=args.iou_floor, nms_thresh=args.nms_thresh,
        min_area=args.min_area, fewer_windows=args.fewer_windows, grid=grid,
    )
    try:
        lo, hi = (float(v) for v in args.percentiles.split(","))
        config = PreprocessConfig(percentiles=(lo, hi))
    except ValueError as err:
        raise UserInputError(f"--percentiles takes two numbers 'low,high' between 0 and 100 (got {args.percentiles!r}).") from err
    if args.tile < 64 or args.halo < 0 or args.halo >= args.tile:
        raise UserInputError("--tile must be at least 64 pixels and --halo between 0 and the tile size.")
    prompts = ()
    if args.prompts:
        from .core.prompt_files import read_prompt_file

        prompts = tuple(read_prompt_file(args.prompts))
    return BatchSettings(args.model, args.device, args.checkpoint, options, config, args.tile, args.halo, args.overwrite, prompts)


def _segment(args) -> int:
    from .core.export import write_text_atomic
    from .core.progress import drain
    from .scaleout import run_batch_job

    out_json = _check_output(args.json) if args.json else None
    settings = _segment_settings(args)
    if args.workers < 0:
        raise UserInputError("--workers must be 0 (run here) or more.")

    def show(res: dict) -> None:
        if res["status"] == "failed":
            sys.stderr.write(("\n" if not args.quiet else "") + f"error: {res['input']}: {res['error']}\n")

    job = run_batch_job(args.inputs, args.out, settings, workers=args.workers, scheduler=args.scheduler, on_result=show)
    summary = drain(job, None if args.quiet else _bar(sys.stderr))
    if not args.quiet:
        sys.stderr.write("\n")
    print(f"{summary['done']} segmented, {summary['skipped']} already done (skipped), {summary['failed']} failed; "
          f"{summary['objects']} objects; outputs in {args.out}")
    if out_json is not None:
        write_text_atomic(out_json, json.dumps(_jsonable(summary), indent=1))
        print(f"wrote {out_json}")
    if summary["failed"]:
        print(f"error: {summary['failed']} of {len(summary['images'])} inputs failed (listed above); rerun to retry them, "
              "finished ones are skipped", file=sys.stderr)
        return 2
    return 0


def _add_segment(sub) -> None:
    from .segmentation import EverythingOptions

    defaults = EverythingOptions()
    sg = sub.add_parser("segment", help="everything mode (or given boxes / points) over files, folders, globs, TIFF stacks and OME-Zarr")
    sg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns ('*.tif'), OME-Zarr")
    sg.add_argument("--out", required=True, help="output folder (created if missing)")
    sg.add_argument("--model", default=None, help="registry name (default: the plugin's default model)")
    sg.add_argument("--checkpoint", default=None, help="weights file for the model (e.g. your own fine-tune)")
    sg.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    sg.add_argument("--mode", default="auto", choices=["auto", "seeds", "grid"])
    sg.add_argument("--prompts", default=None, metavar="FILE",
                    help="segment the objects of a CSV (x0,y0,x1,y1 boxes / x,y,label points; optional object, image "
                         "columns) or GeoJSON (polygons = boxes, points) instead of everything mode; (x, y) pixels")
    sg.add_argument("--min-distance", type=int, default=defaults.min_distance, help="seeds: smallest object radius (px)")
    sg.add_argument("--iou-floor", type=float, default=defaults.iou_floor, help="seeds: drop masks with lower predicted IoU")
    sg.add_argument("--nms-thresh", type=float, default=defaults.nms_thresh, help="overlap above which duplicates are dropped")
    sg.add_argument("--min-area", type=int, default=defaults.min_area, help="drop objects smaller than this (px)")
    sg.add_argument("--fewer-windows", action=argparse.BooleanOptionalAction, default=defaults.fewer_windows,
                    help="seeds: faster (a fifth to two fifths less time), slightly lower F1 on held-out nuclei (docs/models.md)")
    sg.add_argument("--pred-iou-thresh", type=float, default=defaults.grid.pred_iou_thresh, help="grid: predicted IoU threshold")
    sg.add_argument("--stability-thresh", type=float, default=defaults.grid.stability_score_thresh, help="grid: stability threshold")
    sg.add_argument("--percentiles", default="1,99.8", help="intensity stretch 'low,high' (percent)")
    sg.add_argument("--tile", type=int, default=1024, help="planes larger than this (px a side) are segmented in tiles")
    sg.add_argument("--halo", type=int, default=128, help="context around each tile, at least the largest object's radius")
    sg.add_argument("--workers", type=int, default=0, help="N: run on a local Dask cluster of N worker processes")
    sg.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (e.g. tcp://host:8786)")
    sg.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    sg.add_argument("--json", default=None, help="write the batch summary here")
    sg.add_argument("--quiet", action="store_true", help="no progress bar")
    sg.set_defaults(func=_segment)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-sam-micro`` argument parser."""
    from .core.seeded import BOX_STAGE_REUSE

    parser = argparse.ArgumentParser(prog="napari-sam-micro", description="napari-sam-micro command line tools")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="score a model with a simulated user on labelled images")
    ev.add_argument("--model", default=None, help="registry name (default: the plugin's default model)")
    ev.add_argument("--checkpoint", default=None,
                    help="weights file of the model under test (e.g. your own micro-tiny fine-tune)")
    ev.add_argument("--data", required=True, help="folder of data sets (each with index.csv, images/, labels/)")
    ev.add_argument("--split", default="val", choices=["val", "train", "test", "all"],
                    help="test: the locked source groups (only with --split-by source)")
    ev.add_argument("--split-by", default="image", choices=["image", "source"],
                    help="hold out whole images (micro-tiny's training split) or whole acquisitions")
    ev.add_argument("--limit", type=int, default=None, help="at most N images per modality")
    ev.add_argument("--max-objects", type=int, default=None, help="at most N objects per image (fixed sample)")
    ev.add_argument("--prompts", default=None, help="comma-separated: point,box,box+clicks")
    ev.add_argument("--clicks", type=int, default=3, help="corrective clicks after the box")
    ev.add_argument("--baselines", default=None, help="comma-separated (default litemedsam,ellipse; '' for none)")
    ev.add_argument("--everything", action=argparse.BooleanOptionalAction, default=True,
                    help="also score automatic segmentation (F1 at IoU 0.5)")
    ev.add_argument("--everything-images", type=int, default=None,
                    help="run the everything mode on at most N images per modality")
    ev.add_argument("--split-touching", action="store_true",
                    help="everything mode: split touching nuclei (off by default, see docs/models.md)")
    ev.add_argument("--fewer-windows", action=argparse.BooleanOptionalAction, default=BOX_STAGE_REUSE,
                    help="everything mode: the faster seeds mode with fewer windows (off by default, see docs/models.md)")
    ev.add_argument("--modalities", default=None, help="comma-separated modalities to evaluate (default: all)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", default=None, help="write the full result here")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_evaluate)

    me = sub.add_parser("metrics", help="instance scores of a predicted label image against ground truth")
    me.add_argument("gt", help="ground-truth label image (TIFF, PNG or NPY)")
    me.add_argument("pred", help="predicted label image")
    me.add_argument("--json", action="store_true", help="print JSON")
    me.set_defaults(func=_metrics)
    _add_segment(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``napari-sam-micro`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "") is None:
        from .models.registry import default_model_name

        args.model = default_model_name()
    try:
        return int(args.func(args) or 0)
    except (UserInputError, ModelUnavailableError, OSError) as err:  # OSError: disk full, no permission …
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
