#!/usr/bin/env bash
# A plain `pip install .` (no extras) gives a working plugin without PyTorch: in a fresh virtual
# environment, install the package, check that torch is absent, load the plugin's napari manifest,
# load the default model micro-tiny (ONNX Runtime or OpenVINO, as `auto` picks), segment one box on
# a synthetic image, load the shipped sample image and print the environment's size. Then uninstall
# napari from that environment and check that the Python API (load_predictor, segment_prompts)
# works without it, as in a notebook. Usage: bash .ci/check_plain_install.sh [VENV_DIR] (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-$(mktemp -d)/plain-venv}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q .

# run outside the checkout so that the installed package (not ./src) is imported
(cd "$venv" && "$venv/bin/python" - <<'PY'
import importlib.util
import time

import numpy as np

assert importlib.util.find_spec("torch") is None, "torch was installed by the plain install"
import napari_sam_micro
from npe2 import PluginManifest

PluginManifest.from_distribution("napari-sam-micro")  # the plugin's manifest is valid
from napari_sam_micro.models.registry import default_model_name, load_model

name = default_model_name()
t0 = time.perf_counter()
model = load_model(name)
t1 = time.perf_counter()
yy, xx = np.mgrid[:160, :200]
disk = (yy - 80) ** 2 + (xx - 90) ** 2 < 25**2
image = np.repeat((0.1 + 0.8 * disk)[..., None], 3, axis=2).astype(np.float32)
emb = model.encode(image)
out = model.decode(emb, boxes=np.array([[62, 52, 118, 108]], np.float32), multimask_output=False)
mask = model.upscale(emb, out.low_res_logits)[0, 0] > model.mask_threshold
iou = float((mask & disk).sum() / (mask | disk).sum())
print(f"plain install: {name} on {model.runtime}, loaded in {t1 - t0:.1f} s, box IoU {iou:.3f}, "
      f"predicted IoU {float(out.iou_predictions[0, 0]):.3f} (napari_sam_micro {napari_sam_micro.__file__})")
assert name == "micro-tiny" and model.runtime in ("onnxruntime", "openvino", "openvino-int8") and iou > 0.9
from napari_sam_micro._napari.sample import load_dsb2018_nuclei

sample, truth = load_dsb2018_nuclei()  # the sample's data file is in the wheel
assert sample.shape == truth.shape == (512, 512) and int(truth.max()) == 125
PY
)
# the Python API in a notebook needs no napari: remove it from the fresh environment and segment again
"$venv/bin/python" -m pip uninstall -q -y napari
(cd "$venv" && "$venv/bin/python" - <<'PY'
import importlib.util

import numpy as np

assert importlib.util.find_spec("napari") is None, "napari is still installed"
from napari_sam_micro import load_predictor, segment_prompts

yy, xx = np.mgrid[:160, :200]
disk = (yy - 80) ** 2 + (xx - 90) ** 2 < 25**2
image = (20 + 180 * disk).astype(np.uint16)
predictor = load_predictor(progress=False)
predictor.set_image(image)
masks, scores, _ = predictor.predict(boxes=[[62, 52, 118, 108]])
iou = float((masks[0] & disk).sum() / (masks[0] | disk).sum())
labels = segment_prompts(image, boxes=[[62, 52, 118, 108]], model=predictor, progress=False)
print(f"without napari: API box IoU {iou:.3f}, predicted IoU {float(scores[0]):.3f}, labels {np.unique(labels).tolist()}")
assert iou > 0.9 and np.unique(labels).tolist() == [0, 1]
PY
)
echo "plain install size: $(du -sh "$venv" | cut -f1) ($venv)"
