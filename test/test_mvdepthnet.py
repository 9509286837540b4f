"""MVDepthNet conformance against the official-code fixture (shared/fixtures/mvdepthnet) and estimator checks.

Weights are regenerated with the fixture's own weight rule (loaded from the shared folder, not copied).
"""
import importlib.util
import json
import zlib

import cv2
import numpy as np
import pytest
import torch

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.models.checkpoints import CheckpointError
from mvs_depth_ros.models.mvdepthnet import (MVDepthNet, MVDepthNetEstimator, build, load_mvdepthnet, pair_rays,
                                             plane_depths)


def _row_major(krkiuv):
    """Fixture KRKiUV is x-major (column j = pixel x j // 256, y j % 256): -> (3, H*W) row-major."""
    return np.ascontiguousarray(krkiuv.reshape(3, 320, 256).transpose(0, 2, 1).reshape(3, -1))


@pytest.fixture(scope="module")
def fx():
    root = require_shared("fixtures", "mvdepthnet")
    spec = importlib.util.spec_from_file_location("mvdepthnet_weight_rule", root / "weight_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    manifest = json.loads((root / "state_dict_manifest.json").read_text())
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in rule.state_dict(manifest["entries"]).items()}
    z = dict(np.load(root / "golden.npz"))
    t = {k: torch.from_numpy(z[k])[None] for k in ("in_left_image", "in_right_image", "in_right_image_src2")}
    t["KRKiUV"] = torch.from_numpy(_row_major(z["in_KRKiUV"]))[None]
    t["KRKiUV2"] = torch.from_numpy(_row_major(z["in_KRKiUV_src2"]))[None]
    t["KT"] = torch.from_numpy(z["in_KT"])[None]
    t["KT2"] = torch.from_numpy(z["in_KT_src2"])[None]
    return {"manifest": manifest, "sd": sd, "z": z, "t": t, "model": load_mvdepthnet(state_dict=sd)}


@pytest.fixture(scope="module")
def single(fx):
    t = fx["t"]
    with torch.inference_mode():
        cost = fx["model"].cost_volume(t["in_left_image"], t["in_right_image"][:, None], t["KRKiUV"][:, None],
                                       t["KT"][:, None, :, 0])
        disps, feats = fx["model"].forward_volume(t["in_left_image"], cost, return_features=True)
    return {"cost": cost[0].numpy(), "disps": [d[0, 0].numpy() for d in disps],
            "feats": [f[0, :16].numpy() for f in feats]}


def test_weight_rule_checksums(fx):
    crc, total = 0, 0.0
    for t in fx["sd"].values():
        crc = zlib.crc32(t.numpy().tobytes(), crc)
        total += float(t.double().sum())
    expected = fx["manifest"]["weight_checksums"]
    assert len(fx["sd"]) == expected["n_tensors"]
    assert crc == expected["crc32_of_concatenated_raw_bytes"]
    assert total == pytest.approx(expected["sum_float64"], rel=1e-12)


def test_module_tree_matches_official_keys(fx):
    own = MVDepthNet().state_dict()
    assert [e["key"] for e in fx["manifest"]["entries"]] == list(own)
    assert all(list(own[e["key"]].shape) == e["shape"] for e in fx["manifest"]["entries"])


def test_pytorch03_checkpoint_without_bn_counters_loads(fx, tmp_path):
    """The released file (PyTorch 0.3): {'state_dict': ...} without num_batches_tracked."""
    sd = {k: v for k, v in fx["sd"].items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == 108
    path = tmp_path / "opensource_model.pth.tar"
    torch.save({"state_dict": sd}, path)
    model = load_mvdepthnet(str(path))
    assert torch.equal(model.conv1[0].weight, fx["sd"]["conv1.0.weight"])


def test_mismatched_state_dict_gives_readable_error(fx):
    sd = dict(fx["sd"])
    del sd["disp1.0.bias"]
    sd["iconv1.0.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(CheckpointError) as err:
        load_mvdepthnet(state_dict=sd)
    msg = str(err.value)
    assert "disp1.0.bias" in msg and "iconv1.0.weight" in msg and "(64, 64, 3, 3)" in msg


def test_plane_set(fx):
    np.testing.assert_allclose(1.0 / plane_depths(), fx["z"]["in_inverse_depth_planes"], rtol=0, atol=1e-15)


def test_cost_volume(fx, single):
    z = fx["z"]
    idx = z["out_cost_volume_planes_index"].astype(int)
    assert np.abs(single["cost"][idx] - z["out_cost_volume_planes"]).max() < 1e-5
    assert np.abs(single["cost"].mean(axis=(1, 2), dtype=np.float64) - z["out_cost_volume_plane_mean"]).max() < 1e-5
    assert (single["cost"].argmin(0) == z["out_cost_volume_argmin"]).mean() > 0.999


def test_encoder_and_outputs(fx, single):
    z = fx["z"]
    for i, f in enumerate(single["feats"], start=1):
        ref = z[f"out_conv{i}_ch0_15"]
        assert np.abs(f - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), f"conv{i}"
    for i, d in enumerate(single["disps"], start=1):
        assert np.abs(d - z[f"out_disp{i}"]).max() < 1e-5, f"disp{i}"


def test_two_sources_average_cost_volumes(fx):
    z, t = fx["z"], fx["t"]
    with torch.inference_mode():
        cost = fx["model"].cost_volume(t["in_left_image"],
                                       torch.stack((t["in_right_image"], t["in_right_image_src2"]), 1),
                                       torch.stack((t["KRKiUV"], t["KRKiUV2"]), 1),
                                       torch.cat((t["KT"], t["KT2"]), 2).transpose(1, 2))
        disps = fx["model"].forward_volume(t["in_left_image"], cost)
    idx = z["out_cost_volume_planes_index"].astype(int)
    assert np.abs(cost[0, idx].numpy() - z["two_cost_volume_planes"]).max() < 1e-5
    for i, d in enumerate(disps, start=1):
        assert np.abs(d[0, 0].numpy() - z[f"two_disp{i}"]).max() < 1e-5, f"disp{i}"


def test_align_corners_false_matches_unpatched_official(fx):
    t, z = fx["t"], fx["z"]
    model = load_mvdepthnet(state_dict=fx["sd"], align_corners=False)
    with torch.inference_mode():
        disps = model(t["in_left_image"], t["in_right_image"], t["KRKiUV"], t["KT"])
    for i, d in enumerate(disps, start=1):
        assert np.abs(d[0, 0].numpy() - z[f"asis_disp{i}"]).max() < 1e-5, f"disp{i}"


def test_geometry_from_intrinsics_and_poses(fx, single):
    """The estimator's path: K and camera-to-world poses -> KRKiUV/KT (float64, cast) -> cost volume."""
    z = fx["z"]
    poses = z["in_poses_c2w_float64"]
    ref_to_src = np.linalg.inv(poses[1]) @ poses[0]
    np.testing.assert_allclose(ref_to_src, z["in_left2right_float64"], atol=1e-12)
    K = torch.from_numpy(z["in_K_320x256_float64"])[None]
    kr, kt = pair_rays(K, torch.from_numpy(ref_to_src)[None], 256, 320)
    assert np.abs(kr[0].numpy() - _row_major(z["in_KRKiUV"])).max() < 1e-4 * np.abs(z["in_KRKiUV"]).max()
    assert np.abs(kt[0].numpy() - z["in_KT"][:, 0]).max() < 1e-5
    with torch.inference_mode():
        cost = fx["model"].cost_volume(fx["t"]["in_left_image"], fx["t"]["in_right_image"][:, None], kr[None],
                                       kt[None])[0].numpy()
    idx = z["out_cost_volume_planes_index"].astype(int)
    diff = np.abs(cost[idx] - z["out_cost_volume_planes"])
    assert diff.max() < 1e-2 and diff.mean() < 2e-4       # fixture README: max 2.4e-3, mean 5e-5 (float32 KRKiUV)


def test_estimator_preprocessing_matches_official_bgr_path(fx):
    """cv2.imread (BGR) -> uint8 resize -> (x - 81) / 35: the estimator with channel_order='bgr' gives the same."""
    z = fx["z"]
    raw = z["in_images_raw_bgr_uint8_540x360"][0]
    rgb = cv2.cvtColor(cv2.resize(raw, (320, 256)), cv2.COLOR_BGR2RGB)
    est = MVDepthNetEstimator(fx["model"], device="cpu", channel_order="bgr")
    frame = Frame(image=rgb, K=z["in_K_320x256_float64"], T_world_cam=np.eye(4))
    np.testing.assert_array_equal(est._images([frame])[0].numpy(), z["in_left_image"])
    rgb_est = MVDepthNetEstimator(fx["model"], device="cpu")
    np.testing.assert_array_equal(rgb_est._images([frame])[0].numpy(), z["in_left_image"][::-1])


def test_estimator_end_to_end_on_hololens(fx, tmp_path):
    root = require_shared("data", "hololens-000")
    images = sorted((root / "images").glob("*.png"))
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    K = np.loadtxt(root / "K.txt")
    frames = []
    for name in ("00016", "00014"):
        i = [p.stem for p in images].index(name)
        rgb = cv2.cvtColor(cv2.imread(str(images[i])), cv2.COLOR_BGR2RGB)
        frames.append(Frame(image=rgb, K=K, T_world_cam=poses[i], name=name).resized(320, 256))
    ckpt = tmp_path / "mvdepthnet.pth.tar"
    torch.save({"state_dict": fx["sd"]}, ckpt)
    est = build(str(ckpt), device="cpu", min_depth=0.25, max_depth=20.0)
    assert isinstance(est, MVDepthNetEstimator) and est.device.type == "cpu"
    assert est.preferred_measurement_frames == 1
    res = est.estimate(frames[0], frames[1:], est.initial_state())
    assert res.depth.shape == (256, 320) and res.depth.dtype == np.float32
    assert res.confidence.shape == (256, 320) and res.confidence.dtype == np.float32
    valid = np.isfinite(res.depth)
    assert valid.mean() > 0.99                                 # the synthetic net's depth is 0.5..2 m: all in range
    assert res.depth[valid].min() >= 0.5 and res.depth[valid].max() <= 20.0
    assert res.confidence.min() >= 0.0 and res.confidence.max() <= 1.0
    assert (res.confidence[~valid] == 0).all()
    assert 0.0 < res.confidence.mean() < 1.0
    np.testing.assert_allclose(res.K, frames[0].K)
    with pytest.raises(ValueError, match="multiples of 32"):
        est.estimate(frames[0].resized(300, 256), [frames[1].resized(300, 256)])
    with pytest.raises(ValueError, match="channel_order"):
        MVDepthNetEstimator(est.model, device="cpu", channel_order="yuv")


def test_build_requires_checkpoint():
    with pytest.raises(ValueError, match="checkpoint"):
        build(None)


def test_confidence_prefers_photometrically_consistent_depth(fx):
    """Our heuristic confidence (no network involved): higher at the ground-truth depth than at shuffled depths."""
    root = require_shared("data", "hololens-000")
    images = sorted((root / "images").glob("*.png"))
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    K = np.loadtxt(root / "K.txt")
    frames = []
    for name in ("00016", "00014"):
        i = [p.stem for p in images].index(name)
        rgb = cv2.cvtColor(cv2.imread(str(images[i])), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(root / "depth" / f"{name}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        frames.append(Frame(image=rgb, K=K, T_world_cam=poses[i], depth_gt=gt).resized(320, 256))
    est = MVDepthNetEstimator(fx["model"], device="cpu")
    imgs = est._images(frames)
    ref_to_src = np.linalg.inv(frames[1].T_world_cam) @ frames[0].T_world_cam
    kr, kt = pair_rays(torch.from_numpy(frames[1].K)[None], torch.from_numpy(ref_to_src)[None], 256, 320)
    gt = torch.from_numpy(frames[0].depth_gt)
    ok = gt > 0.5
    disp_gt = torch.where(ok, 1.0 / gt.clamp(min=0.5), torch.tensor(0.5))[None, None]
    shuffled = disp_gt.flatten()[torch.randperm(disp_gt.numel(), generator=torch.Generator().manual_seed(0))]
    with torch.inference_mode():
        cost = fx["model"].cost_volume(imgs[:1], imgs[None, 1:], kr[None], kt[None])
        c_gt = est.confidence(cost, disp_gt, kr, kt)[ok].mean()
        c_shuffled = est.confidence(cost, shuffled.view_as(disp_gt), kr, kt)[ok].mean()
    assert c_gt > 1.5 * c_shuffled, (float(c_gt), float(c_shuffled))
