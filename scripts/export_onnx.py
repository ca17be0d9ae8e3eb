"""Export micro-tiny's image encoder and prompt encoder + mask decoder to ONNX (needs torch).

Writes ``micro-tiny.encoder.onnx``, ``micro-tiny.decoder.onnx`` and ``micro-tiny.onnx.json`` (the
SHA-256 of the weights they came from and of each graph, and how far ONNX Runtime is from torch)
next to the shipped weights, where the torch-free runtime
(:mod:`napari_sam_micro.models.onnx_runtime`) finds them. Run it after new weights are exported::

    python scripts/export_onnx.py            # into src/napari_sam_micro/weights/
    python scripts/export_onnx.py --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    args = parser.parse_args(argv)

    from napari_sam_micro.models import micro
    from napari_sam_micro.models.onnx_export import export_model_onnx

    net = micro.build_micro(None, "cpu", runtime="torch").net
    out = args.out if args.out is not None else micro.WEIGHTS_PATH.parent
    manifest = export_model_onnx(net, out, micro.MICRO_NAME, micro.WEIGHTS_SHA256)
    print(json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
