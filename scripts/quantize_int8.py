"""Quantise micro-tiny's shipped ONNX image encoder to int8 for OpenVINO (needs ``nncf`` and the training data).

Writes ``micro-tiny.encoder-int8.xml`` / ``.bin`` and the manifest ``micro-tiny.encoder-int8.json``
next to the shipped weights (see :mod:`napari_sam_micro.models.openvino_int8`). Run it again after
``scripts/export_onnx.py`` has written a new encoder: the runtime refuses an int8 file made from
another encoder. ::

    pip install nncf
    python scripts/quantize_int8.py --data ../shared/data            # into src/napari_sam_micro/weights/
    python scripts/quantize_int8.py --data ../shared/data --out DIR

Calibration windows are the windows the plugin itself encodes (clicks and boxes on ground-truth
objects, and everything mode on images up to 700 x 700) on images of micro-tiny's **training**
split, a few of each modality; held-out images are never seen, so the quality check in
docs/models.md is honest. NNCF's post-training quantisation with its transformer preset
(``ModelType.TRANSFORMER``, mixed preset: symmetric weights, asymmetric activations) quantises the
matrix products and convolutions; the rest stays in floating point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def record_windows(data: Path, per_modality: int, seed: int) -> np.ndarray:
    """``(N, 3, 256, 256)`` ``float32`` encoder inputs of the plugin's own windows on training images."""
    from napari_sam_micro import load_predictor, segment_everything
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy
    from napari_sam_micro.evaluation import load_raw, select_records
    from napari_sam_micro.models.onnx_runtime import preprocess_numpy

    predictor = load_predictor("micro-tiny", runtime="onnxruntime", progress=False)
    model = predictor.model
    windows: list[np.ndarray] = []
    encode_batch = model.encode_batch

    def recording(images):  # the adapter's public entry point: every window passes here
        windows.extend(preprocess_numpy(np.asarray(image), model.image_size)[0] for image in images)
        return encode_batch(images)

    model.encode_batch = recording
    rng = np.random.default_rng(seed)
    by_modality: dict[str, list] = {}
    for rec in select_records(data, split="train"):
        by_modality.setdefault(rec.modality, []).append(rec)
    for modality, records in sorted(by_modality.items()):
        for i in rng.choice(len(records), min(per_modality, len(records)), replace=False):
            try:
                raw, labels = load_raw(records[i])
            except Exception as err:  # noqa: BLE001 - z / t stacks: not 2D images
                print(f"skipped {records[i].name}: {err}", file=sys.stderr)
                continue
            before = len(windows)
            predictor.set_image(raw)
            for oid in [o for o in np.unique(labels) if o][:6]:
                gt = labels == oid
                r, c, _ = farthest_interior_point(gt)
                predictor.predict(points=[[c, r]], labels=[1])
                predictor.predict(boxes=mask_to_box_xyxy(gt)[None].astype(float))
            if raw.shape[0] * raw.shape[1] <= 700 * 700:
                segment_everything(raw, model=predictor)
            print(f"{modality:15s} {records[i].name}: {len(windows) - before} windows", file=sys.stderr)
    model.encode_batch = encode_batch
    return np.concatenate(windows).astype(np.float32)


def quantize(onnx_path: Path, windows: np.ndarray, subset: int, seed: int):
    """The NNCF int8 model of ``onnx_path`` calibrated on ``subset`` of ``windows`` (shuffled with ``seed``)."""
    import nncf
    import openvino as ov

    order = np.random.default_rng(seed).permutation(len(windows))
    model = ov.Core().read_model(str(onnx_path))
    model.reshape([1, 3, 256, 256])
    dataset = nncf.Dataset([windows[i : i + 1] for i in order])
    return nncf.quantize(
        model,
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=min(subset, len(windows)),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of data sets (../shared/data)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    parser.add_argument("--per-modality", type=int, default=6, help="training images per modality")
    parser.add_argument("--subset", type=int, default=300, help="calibration windows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import nncf
    import openvino as ov

    from napari_sam_micro.models import micro
    from napari_sam_micro.models.checkpoints import file_sha256
    from napari_sam_micro.models.openvino_int8 import int8_file_names

    folder = micro.WEIGHTS_PATH.parent
    out = args.out if args.out is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    onnx_manifest = json.loads((folder / f"{micro.MICRO_NAME}.onnx.json").read_text(encoding="utf-8"))
    onnx_path = folder / onnx_manifest["encoder"]["file"]
    windows = record_windows(args.data, args.per_modality, args.seed)
    quantized = quantize(onnx_path, windows, args.subset, args.seed)
    names = int8_file_names(micro.MICRO_NAME)
    ov.save_model(quantized, str(out / names["xml"]))  # weights not quantised are stored in float16
    manifest = {
        "source_encoder_sha256": file_sha256(onnx_path),
        "xml": {"file": names["xml"], "sha256": file_sha256(out / names["xml"])},
        "bin": {"file": names["bin"], "sha256": file_sha256(out / names["bin"])},
        "openvino": ov.__version__,
        "nncf": nncf.__version__,
        "calibration": {
            "split": "micro-tiny's training split (by image)",
            "images_per_modality": args.per_modality,
            "windows_recorded": int(len(windows)),
            "windows_used": int(min(args.subset, len(windows))),
            "seed": args.seed,
            "preset": "ModelType.TRANSFORMER, QuantizationPreset.MIXED",
        },
    }
    (out / names["manifest"]).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
