"""DynamicStereo: module tree vs the official manifest, strict checkpoint loading, windowing rules, the
estimator wrapper, and conformance with the official network's recorded outputs (``fixtures/dynamic_stereo``).

The conformance run (one 5-frame window at 384x256 with 20 iterations, every intermediate recorded) is the
expensive part (~40 s on 2 idle cores); the full 20-frame windowed run is marked ``slow``; its last window
(T=10, time-embedding resampling + tail stitching) runs in the default suite.
"""
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import require_shared
from mvs_depth_ros.core.frame import StereoFrame
from mvs_depth_ros.core.stereo import StereoPipeline
from mvs_depth_ros.models.checkpoints import CheckpointError
from mvs_depth_ros.models.stereo.dynamic_stereo import (DynamicStereoConfig, DynamicStereoEstimator,
                                                       DynamicStereoState, MissingCheckpointError, build,
                                                       infer_video, load_weights, pad_amounts, pad_video,
                                                       window_plan)
from mvs_depth_ros.models.stereo.dynamic_stereo_blocks import TimeAttnBlock, resample_time_embedding
from mvs_depth_ros.models.stereo.dynamic_stereo_net import DynamicStereo

FIXTURE = ("fixtures", "dynamic_stereo")


# --------------------------------------------------------------------------------- fixture helpers
def _weight_rule():
    path = require_shared(*FIXTURE, "weight_rule.py")
    spec = importlib.util.spec_from_file_location("dynamic_stereo_weight_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest():
    with open(require_shared(*FIXTURE, "state_dict_manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def rule_state_dict(manifest):
    """The fixture's generated weights (numpy rule from the shared folder), as torch tensors."""
    return {k: torch.from_numpy(v) for k, v in _weight_rule().state_dict(manifest).items()}


@pytest.fixture(scope="module")
def net(rule_state_dict):
    model = DynamicStereo()
    load_weights(model, rule_state_dict)
    return model.eval()


# ------------------------------------------------------------------------------ module tree, loading
def test_state_dict_matches_official_manifest(manifest):
    own = DynamicStereo().state_dict()
    entries = manifest["entries"]
    assert len(own) == manifest["n_entries"] == 274
    assert list(own) == [e["key"] for e in entries]  # same names in the same order
    assert all(tuple(own[e["key"]].shape) == tuple(e["shape"]) for e in entries)
    assert sum(v.numel() for v in own.values()) == manifest["n_elements"]


def test_weight_rule_checksum(manifest, rule_state_dict):
    crc, total = _weight_rule().checksums({k: v.numpy() for k, v in rule_state_dict.items()})
    assert crc == 1964766537
    assert total == pytest.approx(1749.3349940006797, rel=1e-12)


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "module_prefix", "state_dict_module"])
def test_checkpoint_layouts_load_strictly(tmp_path, rule_state_dict, layout):
    sd = rule_state_dict
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    obj = {"plain": sd, "model": {"model": sd, "epoch": torch.tensor(3)}, "state_dict": {"state_dict": sd},
           "module_prefix": prefixed, "state_dict_module": {"state_dict": prefixed}}[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = DynamicStereo()
    load_weights(model, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_checkpoint_mismatches_are_reported(rule_state_dict):
    sd = dict(rule_state_dict)
    del sd["update_block04.mask.2.bias"]
    sd["refinement.extra.weight"] = torch.zeros(3)
    sd["fnet.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_weights(DynamicStereo(), sd)
    msg = str(err.value)
    assert "missing keys: update_block04.mask.2.bias" in msg
    assert "unexpected keys: refinement.extra.weight" in msg
    assert "fnet.conv2.weight: checkpoint (128, 128, 1, 1) vs network (256, 128, 1, 1)" in msg


def test_build_without_checkpoint_is_a_clear_error():
    with pytest.raises(MissingCheckpointError, match="needs a checkpoint.*CC BY-NC"):
        build()
    assert issubclass(MissingCheckpointError, ValueError)


def test_unused_qkv_projection_has_no_effect():
    """Fixture quirk 5: the temporal attention's qkv weights are loaded but never applied."""
    torch.manual_seed(0)
    block = TimeAttnBlock().eval()
    x = torch.randn(2 * 3, 256, 4, 5)
    with torch.no_grad():
        y0 = block(x, T=3)
        block.temporal_attn.qkv.weight.normal_()
        y1 = block(x, T=3)
        # ... and it really attends over time: changing one frame changes the others
        x2 = x.clone()
        x2[2] += torch.randn_like(x2[2])
        y2 = block(x2, T=3)
    assert torch.equal(y0, y1)
    assert (y2[:2] - y0[:2]).abs().max() > 1e-3  # frames 0, 1 see frame 2 ...
    assert (y2[3:] - y0[3:]).abs().max() < 1e-5  # ... the other video's frames do not


def test_time_embedding_resampling_is_nearest_floor():
    embed = torch.arange(5, dtype=torch.float32).view(1, 5, 1).expand(1, 5, 4)
    for T in (1, 3, 5, 7, 10, 20):
        got = resample_time_embedding(embed, T)[0, :, 0]
        assert got.tolist() == [float(t * 5 // T) for t in range(T)]


# ----------------------------------------------------------------------------------------- windowing
def _kept(plan):
    return [f for w in plan for f in range(w.keep_start, w.keep_stop)]


def test_official_window_plan_drops_frames_like_forward_batch_test():
    assert window_plan(5, 20, "official") == []  # quirk 1: empty result for a 5-frame video
    assert _kept(window_plan(10, 20, "official")) == list(range(5))
    assert _kept(window_plan(15, 20, "official")) == list(range(10))
    plan = window_plan(20, 20, "official")
    assert [(w.start, w.stop) for w in plan] == [(0, 20), (10, 20)]  # T = 20 then T = 10 (out_window_T)
    assert _kept(plan) == list(range(20))
    assert [(w.start, w.stop, w.keep_start, w.keep_stop) for w in window_plan(35, 20, "official")] == \
        [(0, 20, 0, 15), (10, 30, 15, 25), (20, 35, 25, 35)]
    # odd stride (kernel 10 -> stride 5): head trim 2, tail trim 3
    assert [(w.keep_start, w.keep_stop) for w in window_plan(20, 10, "official")] == \
        [(0, 7), (7, 12), (12, 17), (17, 20)]


@pytest.mark.parametrize("kernel", [2, 5, 10, 20])
def test_complete_window_plan_covers_every_frame_once(kernel):
    for n in range(0, 47):
        plan = window_plan(n, kernel, "complete")
        assert _kept(plan) == list(range(n)), (n, kernel)
        for w in plan:
            assert w.start <= w.keep_start < w.keep_stop <= w.stop and w.stop - w.start == min(n, kernel)


def test_padding_matches_official_input_padder():
    assert pad_amounts(240, 360) == (12, 12, 8, 8)
    assert pad_amounts(96, 256) == (0, 0, 0, 0)
    assert pad_amounts(64, 100, min_width=256) == (78, 78, 0, 0)
    v = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(1, 2, 3, 4, 5)
    p = pad_video(v, (1, 2, 3, 0))
    assert p.shape == (1, 2, 3, 7, 8) and torch.equal(p[..., 3:, 1:6], v) and torch.equal(p[..., 0, 0], v[..., 0, 0])


# ------------------------------------------------------------------------------------- conformance
@pytest.fixture(scope="module")
def golden():
    return dict(np.load(require_shared(*FIXTURE, "golden.npz")))


@pytest.fixture(scope="module")
def traced(net, golden):
    """One official-configuration window (T=5, iters=20) on the fixture's padded input, all intermediates."""
    video = torch.from_numpy(golden["in_stereo_video_uint8"]).float()
    pads = tuple(int(p) for p in golden["in_pad_lrtb"])
    assert pad_amounts(*video.shape[-2:]) == pads
    padded = pad_video(video, pads)
    trace = {}
    with torch.inference_mode():
        out = net(padded[None, :, 0], padded[None, :, 1], iters=20, trace=trace)
    return out, trace, pads


def _np(x):
    return x.detach().cpu().numpy()


def _assert_close(got, want, rel=1e-5, abs_px=None, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max()
    limit = abs_px if abs_px is not None else rel * np.abs(want).max()
    assert err <= limit, f"{what}: max |diff| {err:.3g} > {limit:.3g}"


def test_conformance_features(traced, golden):
    _, tr, _ = traced
    _assert_close(np.stack([_np(f[0, :, 32]) for f in tr["fnet"]]), golden["out_fnet_frame0_row32"], what="fnet")
    _assert_close(np.stack([_np(f[0]) for f in tr["fmap_dw16_pre_attn"]]), golden["out_fmap_dw16_pre_attn_frame0"],
                  what="pre-attention 1/16")
    _assert_close(np.stack([_np(f) for f in tr["fmap_dw16_post_attn"]]), golden["out_fmap_dw16_post_attn"],
                  what="post-attention 1/16")


@pytest.mark.parametrize("stage", ["dw16", "dw8", "dw4"])
def test_conformance_refinement_stage(traced, golden, stage):
    _, tr, _ = traced
    _assert_close(_np(tr[f"corr_init_{stage}"][0]), golden[f"out_corr_init_{stage}_frame0"], what=f"corr {stage}")
    if stage != "dw16":  # stage initialisation after the sign flip
        _assert_close(_np(tr[f"flow_init_{stage}"]), golden[f"out_flow_init_{stage}"], abs_px=1e-4,
                      what=f"init {stage}")
    flows = np.stack([_np(f) for f in tr[f"flow_{stage}_iters"]])
    want = golden[f"out_flow_{stage}_iters"]
    assert flows.shape == want.shape
    for i in range(len(want)):
        _assert_close(flows[i], want[i], abs_px=1e-4, what=f"{stage} update {i}")
    if stage != "dw4":
        _assert_close(_np(tr[f"flow_up_{stage}_last"]), golden[f"out_flow_up_{stage}_last"], abs_px=1e-4,
                      what=f"upsampled {stage}")


def test_conformance_all_predictions(traced, golden):
    _, tr, _ = traced
    preds = np.stack([_np(p[:, 0]) for p in tr["preds"]])  # (40, 5, 256, 384) signed, padded
    assert preds.shape[0] == 40
    _assert_close(preds[:, :, 0:32, 0:32], golden["out_pred_iters_crop_tl"], abs_px=1e-4, what="border crops")
    _assert_close(preds[:, :, 112:144, 176:208], golden["out_pred_iters_crop_c"], abs_px=1e-4, what="centre crops")
    p64 = preds.astype(np.float64)
    stats = np.stack([p64.mean((2, 3)), p64.std((2, 3)), p64.min((2, 3)), p64.max((2, 3))], axis=-1)
    _assert_close(stats, golden["out_pred_iters_stats"], abs_px=1e-4, what="prediction stats")


def test_conformance_final_disparity(traced, golden):
    out, _, pads = traced
    left, right, top, bottom = pads
    flow_x = _np(out.flow[0, :, 0])[:, top:-bottom, left:-right]
    disp = np.abs(flow_x)
    _assert_close(disp, golden["out_disparity"], abs_px=1e-4, what="out_disparity")
    want_sign = golden["out_disparity_sign"]
    clear = np.abs(golden["out_disparity"]) > 1e-3
    assert np.array_equal(np.sign(flow_x)[clear], want_sign[clear])
    assert np.mean(want_sign < 0) == pytest.approx(0.084, abs=0.01)


# -------------------------------------------------------------------------- windowed (T != 5) fixture
@pytest.fixture(scope="module")
def golden20():
    return dict(np.load(require_shared(*FIXTURE, "golden_window20.npz")))


def test_window20_last_window_time_embedding_and_tail(net, golden20):
    """The official second window (frames 10..19, T=10: resampled time embedding) gives frames 15..19."""
    assert golden20["out_window_T"].tolist() == [20, 10]
    video = golden20["in_stereo_video_uint8"]
    disp = infer_video(net, video[10:20], kernel_size=10, iters=20, mode="complete")
    _assert_close(disp[5:], golden20["out_disparity"][15:20], abs_px=1e-4, what="window 1 (T=10)")


@pytest.mark.slow
def test_window20_official_windowing_end_to_end(net, golden20):
    """The whole official ``forward_batch_test(kernel_size=20, iters=20)`` on 20 frames (T=20 and T=10)."""
    disp = infer_video(net, golden20["in_stereo_video_uint8"], kernel_size=20, iters=20, mode="official")
    _assert_close(disp, golden20["out_disparity"], abs_px=1e-4, what="golden_window20")


# ----------------------------------------------------------------------------------------- estimator
def _frames(n, h=32, w=256, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w + 8, 3), dtype=np.uint8)
    K = np.array([[200.0, 0, w / 2], [0, 200.0, h / 2], [0, 0, 1]])
    out = []
    for i in range(n):
        left = np.ascontiguousarray(np.roll(base, i, axis=1)[:, 8:])
        right = np.ascontiguousarray(np.roll(base, i, axis=1)[:, :-8])  # constant 8 px disparity
        out.append(StereoFrame(left=left, right=right, K=K, baseline=0.1, stamp=i * 100_000_000, name=f"{i}"))
    return out


def test_estimator_sliding_window_and_outputs(net):
    est = DynamicStereoEstimator(net, DynamicStereoConfig(window=2, iters=2), device="cpu")
    frames = _frames(3)
    pipe = StereoPipeline(est)
    results = [pipe.process(f) for f in frames]
    assert [r.info["window"] for r in results] == [1, 2, 2]
    assert [f.name for f in pipe.state.frames] == ["1", "2"]
    for r, f in zip(results, frames):
        assert r.disparity.shape == r.depth.shape == r.confidence.shape == (32, 256)
        assert np.isfinite(r.disparity).all() and (r.disparity >= 0).all()
        assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
        ok = r.disparity > 0
        np.testing.assert_allclose(r.depth[ok], 200.0 * 0.1 / r.disparity[ok], rtol=1e-5)
    # the newest frame of the window is the output: same as running the window offline
    video = np.stack([np.stack([f.left.transpose(2, 0, 1), f.right.transpose(2, 0, 1)]) for f in frames[1:]])
    offline = infer_video(net, video, kernel_size=2, iters=2, mode="complete")
    np.testing.assert_allclose(results[-1].disparity, offline[-1], atol=1e-4)
    # temporal coupling: the same newest pair with a different history gives a different result
    alone = est.estimate(frames[-1], DynamicStereoState())
    assert np.abs(alone.disparity - results[-1].disparity).mean() > 1e-4


def test_estimator_resets_window_on_incompatible_frame(net):
    est = DynamicStereoEstimator(net, DynamicStereoConfig(window=4, iters=2), device="cpu")
    state = est.estimate(_frames(1)[0], est.initial_state()).state
    other = _frames(1, h=64, w=256)[0]
    r = est.estimate(other, state)
    assert r.info["window"] == 1 and r.disparity.shape == (64, 256)
    assert [f.name for f in r.state.frames] == ["0"] and r.state.frames[0] is other


def test_estimator_reduced_scale_returns_input_resolution(net):
    est = DynamicStereoEstimator(net, DynamicStereoConfig(window=1, iters=2, scale=0.5), device="cpu")
    f = _frames(1, h=32, w=512)[0]
    r = est.estimate(f, None)
    assert r.disparity.shape == (32, 512) and r.disparity.dtype == np.float32


def test_build_from_checkpoint_file(tmp_path, rule_state_dict):
    path = tmp_path / "dynamic_stereo_sf.pth"
    torch.save({"model": rule_state_dict}, path)
    est = build(str(path), device="cpu", window=2, iters=4)
    assert isinstance(est, DynamicStereoEstimator) and est.config.window == 2 and est.config.iters == 4
    with pytest.raises(ValueError, match="unknown dynamic_stereo option"):
        build(str(path), device="cpu", kernel=3)
    from mvs_depth_ros.models.registry import create_stereo_model
    via_registry = create_stereo_model("dynamic_stereo", checkpoint=str(path), device="cpu", iters=2)
    assert isinstance(via_registry, DynamicStereoEstimator) and via_registry.config.iters == 2
