"""A random-weight SAM with tiny dimensions, built from segment-anything's own classes.

Fast on CPU, deterministic for a seed, never downloads: the model most tests use.
"""

from __future__ import annotations

import torch

__all__ = ["build_tiny_sam"]


def build_tiny_sam(seed: int = 0, img_size: int = 256):
    """Build a tiny :class:`segment_anything.modeling.Sam` with random weights.

    Parameters
    ----------
    seed : int
        Seed of the weight initialisation (same seed, same weights).
    img_size : int
        Side of the square encoder input; the embedding is ``(1, 32, 64, 64)`` for any size that is
        a multiple of 64.

    Returns
    -------
    segment_anything.modeling.Sam
        In eval mode, on the CPU.
    """
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    patch = img_size // 64
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=dim,
                img_size=img_size,
                mlp_ratio=2,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=patch,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=8,
                out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(64, 64),
                input_image_size=(img_size, img_size),
                mask_in_chans=8,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim,
                iou_head_depth=3,
                iou_head_hidden_dim=dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return sam.eval()
