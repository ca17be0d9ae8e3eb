"""How much refining existing labels gains: degraded ground truth, refined through the plugin's path.

For each image of a data set (e.g. the DSB fluorescence validation split), the ground-truth labels
are spoiled (:mod:`napari_sam_micro.core.degrade`: eroded, dilated, touching pairs merged), every
object of the spoiled labels is refined with
:func:`~napari_sam_micro.plane_jobs.refine_job` and accepted, and each ground-truth
object's best-match IoU is measured before and after
(:func:`~napari_sam_micro.core.degrade.best_match_iou`). Numbers are in ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core.degrade import DEGRADATIONS, best_match_iou, degrade_labels
from .core.progress import Job, Progress
from .core.refine import DEFAULT_BOX_PAD, DEFAULT_STRATEGY, apply_refinements
from .evaluation import ImageRecord, load_raw, preprocess_config_for
from .plane_jobs import refine_job

__all__ = ["refine_report_job", "format_refine_table"]


def refine_report_job(
    model,
    spec,
    records: Sequence[ImageRecord],
    degradations: Sequence[str] = DEGRADATIONS,
    strategies: Sequence[str] = (DEFAULT_STRATEGY,),
    box_pad: float = DEFAULT_BOX_PAD,
    cache=None,
) -> Job[dict]:
    """Mean best-match IoU of ground-truth objects before and after refining degraded labels; a job.

    Parameters
    ----------
    model : PromptableModel
    spec : ModelSpec
        Its registry spec (how prompts are decoded).
    records : sequence of ImageRecord
    degradations, strategies : sequence of str
        :data:`~napari_sam_micro.core.degrade.DEGRADATIONS`, :data:`~napari_sam_micro.core.refine.STRATEGIES`.

    Returns
    -------
    dict
        ``{"before": {degradation: mean IoU}, "after": {strategy: {degradation: mean IoU}},
        "objects": number of ground-truth objects, "images": number of images}``: means over all
        ground-truth objects of all images (pooled).
    """
    from .core.cache import EmbeddingCache
    from .session import AnnotationSession

    cache = cache if cache is not None else EmbeddingCache(max_bytes=512 << 20)
    before = {d: [] for d in degradations}
    after = {s: {d: [] for d in degradations} for s in strategies}
    for k, rec in enumerate(records):
        yield Progress(k, len(records), f"Refining degraded labels of {rec.name}")
        raw, gt = load_raw(rec)
        config = preprocess_config_for(raw)
        session = AnnotationSession(model, cache, config, **AnnotationSession.options_for(spec))
        session.set_image(raw, config)
        for how in degradations:
            spoiled = degrade_labels(gt, how)
            before[how].append(best_match_iou(gt, spoiled))
            for strategy in strategies:
                refined = yield from refine_job(session, spoiled, strategy=strategy, box_pad=box_pad)
                after[strategy][how].append(best_match_iou(gt, apply_refinements(spoiled, refined)))
    yield Progress(len(records), len(records), "Done")

    def mean(parts):
        return float(np.concatenate(parts).mean()) if parts and sum(len(p) for p in parts) else float("nan")

    n_objects = sum(len(p) for p in before[degradations[0]]) if degradations else 0
    return {
        "before": {d: mean(v) for d, v in before.items()},
        "after": {s: {d: mean(v) for d, v in per.items()} for s, per in after.items()},
        "objects": n_objects,
        "images": len(records),
    }


def format_refine_table(result: dict) -> str:
    """A Markdown table: one row per degradation, the IoU before and after each strategy."""
    strategies = list(result["after"])
    head = "| labels | before | " + " | ".join(f"after ({s})" for s in strategies) + " |"
    lines = [head, "|" + "---|" * (2 + len(strategies))]
    for how, value in result["before"].items():
        cells = " | ".join(f"{result['after'][s][how]:.3f}" for s in strategies)
        lines.append(f"| {how} | {value:.3f} | {cells} |")
    return "\n".join(lines)
