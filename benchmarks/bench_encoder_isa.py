"""micro-tiny's image encoder per 256-px window: fp32, bfloat16 and int8, with the CPU's instruction set capped.

One process per cap (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once): the whole CPU, ``AVX2_VNNI``
(standing in for Intel laptops of Alder Lake and later: no AVX-512, VNNI on 256-bit registers) and
``AVX2`` (CPUs without VNNI: AMD Zen 2 / 3, Intel Core before Ice Lake). OpenVINO fp32, bfloat16
(where the cap allows it) and the shipped int8 IR; ONNX Runtime fp32 once, uncapped (it has no such
cap). Each figure is the median of 10 calls on one window after 3 warm-up calls, in the same run,
with the plugin's thread count. :func:`napari_sam_micro.models.openvino_int8.int8_pays_off`
compares int8 with ONNX Runtime fp32 (at most 0.8), which has no instruction-set cap; OpenVINO fp32
under the same cap stands in for it (uncapped, the two fp32 runtimes were within 15 %).

Usage::

    python benchmarks/bench_encoder_isa.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CAPS = ("", "AVX2_VNNI", "AVX2")

_CHILD = r"""
import json, statistics, sys, time
import numpy as np
from napari_sam_micro.models.micro import WEIGHTS_PATH
from napari_sam_micro.models.onnx_encoder import OnnxEncoderError, OrtImageEncoder
from napari_sam_micro.models.openvino_encoder import OvImageEncoder

folder = WEIGHTS_PATH.parent
window = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
encoders = {}
if sys.argv[1] == "ort":
    encoders["ONNX Runtime fp32"] = OrtImageEncoder(folder / "micro-tiny.encoder.onnx")
else:
    encoders["OpenVINO fp32"] = OvImageEncoder(folder / "micro-tiny.encoder.onnx", precision="f32")
    try:
        encoders["OpenVINO bf16"] = OvImageEncoder(folder / "micro-tiny.encoder.onnx", precision="bf16")
    except OnnxEncoderError:
        pass  # no bfloat16 under this cap
    encoders["OpenVINO int8"] = OvImageEncoder(folder / "micro-tiny.encoder-int8.xml", precision="f32")
out = {}
for name, encode in encoders.items():
    for _ in range(3):
        encode(window)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        encode(window)
        times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
print(json.dumps(out))
"""


def run(kind: str, cap: str) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    done = subprocess.run([sys.executable, "-c", _CHILD, kind], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ort = run("ort", "")["ONNX Runtime fp32"]
    print(f"ONNX Runtime fp32, whole CPU: {ort * 1000:.0f} ms per window")
    print(f"{'cap':<12}{'OV fp32':>10}{'OV bf16':>10}{'OV int8':>10}{'int8/fp32':>11}")
    for cap in CAPS:
        got = run("ov", cap)
        bf16 = f"{got['OpenVINO bf16'] * 1000:.0f}" if "OpenVINO bf16" in got else "-"
        ratio = got["OpenVINO int8"] / got["OpenVINO fp32"]
        print(f"{cap or 'whole CPU':<12}{got['OpenVINO fp32'] * 1000:>10.0f}{bf16:>10}{got['OpenVINO int8'] * 1000:>10.0f}{ratio:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
