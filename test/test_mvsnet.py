"""MVSNet conformance against the official-code fixture (shared/fixtures/mvsnet) and estimator checks.

Weights are regenerated with the fixture's own weight rule (loaded from the shared folder, not copied).
"""
import importlib.util
import json
import zlib

import numpy as np
import pytest
import torch

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.models.checkpoints import CheckpointError
from mvs_depth_ros.models.mvsnet import (MVSNet, MVSNetEstimator, build, feature_projection_matrices, load_mvsnet,
                                         resample_to_reference)


def _rel(a, b):
    """max |a - b| / rms(b)"""
    return float(np.abs(np.asarray(a) - b).max() / np.sqrt(np.mean(np.square(b, dtype=np.float64))))


@pytest.fixture(scope="module")
def fx():
    root = require_shared("fixtures", "mvsnet")
    spec = importlib.util.spec_from_file_location("mvsnet_weight_rule", root / "weight_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    manifest = json.loads((root / "state_dict_manifest.json").read_text())
    golden = dict(np.load(root / "golden.npz"))

    def weights(variant):
        sd = rule.state_dict(manifest["variants"][variant]["entries"])
        return {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    return {"rule": rule, "manifest": manifest, "z": golden, "weights": weights}


@pytest.fixture(scope="module")
def run(fx):
    """The official forward call on the fixture inputs, with stage outputs."""
    z = fx["z"]
    model = load_mvsnet(state_dict=fx["weights"]("refine_false"))
    imgs = torch.from_numpy(z["in_imgs"])[None]
    proj = torch.from_numpy(z["in_proj_matrices"])[None]
    dv = torch.from_numpy(z["in_depth_values"])[None]
    with torch.inference_mode():
        feats = model.feature(imgs[0])
        grids = model.homography_grids(proj, dv, 64, 80)
        volume = model.variance_volume(feats[None], grids)
        logits = model.cost_regularization(volume)[0, 0]
        out = model.regress(volume, dv)
    idx = z["out_variance_planes_index"].astype(int)
    return {"model": model, "feats": feats.numpy(), "grids": grids[0][:, idx].numpy(),
            "variance": volume[0][:, idx].numpy(), "variance_mean": volume[0].mean(dim=(2, 3)).numpy(),
            "logits": logits[idx].numpy(), "out": {k: v[0].numpy() for k, v in out.items()}}


def test_weight_rule_checksums(fx):
    for variant, block in fx["manifest"]["variants"].items():
        sd = fx["weights"](variant)
        crc, total = 0, 0.0
        for t in sd.values():
            crc = zlib.crc32(t.numpy().tobytes(), crc)
            total += float(t.double().sum())
        expected = fx["manifest"]["weight_checksums"][variant]
        assert len(sd) == expected["n_tensors"] == block["n_tensors"]
        assert crc == expected["crc32_of_concatenated_raw_bytes"]
        assert total == pytest.approx(expected["sum_float64"], rel=1e-12)


@pytest.mark.parametrize("variant,refine", [("refine_false", False), ("refine_true", True)])
def test_module_tree_matches_official_keys(fx, variant, refine):
    entries = fx["manifest"]["variants"][variant]["entries"]
    own = MVSNet(refine=refine).state_dict()
    assert [e["key"] for e in entries] == list(own)
    assert all(list(own[e["key"]].shape) == e["shape"] for e in entries)
    model = load_mvsnet(state_dict=fx["weights"](variant))
    assert model.refine is refine


def test_refine_variant_runs(fx):
    """No official refine output exists (its forward cannot run); check the paper-style path end to end."""
    z = fx["z"]
    model = load_mvsnet(state_dict=fx["weights"]("refine_true"))
    imgs = torch.from_numpy(z["in_imgs"])[None]
    with torch.inference_mode():
        depth = torch.full((1, 64, 80), 5.0)
        refined = model.refine_depth(imgs[:, 0], depth, torch.from_numpy(z["in_depth_values"])[None])
    assert refined.shape == (1, 64, 80) and torch.isfinite(refined).all()
    assert (refined >= depth - 1e-4).all()  # the official residual head ends in a ReLU


def test_mismatched_state_dict_gives_readable_error(fx):
    sd = fx["weights"]("refine_false")
    del sd["feature.conv0.bn.running_var"]
    sd["cost_regularization.prob.weight"] = torch.zeros(1, 8, 3, 3)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_mvsnet(state_dict=sd)
    msg = str(err.value)
    assert "feature.conv0.bn.running_var" in msg and "extra.weight" in msg
    assert "cost_regularization.prob.weight" in msg and "(1, 8, 3, 3)" in msg


def test_features(fx, run):
    assert _rel(run["feats"], fx["z"]["out_features"]) < 1e-5


def test_homography_grids(fx, run):
    assert np.abs(run["grids"] - fx["z"]["out_grids_planes"]).max() < 2e-6


def test_grids_from_poses_float64(fx):
    """The estimator's geometry path: K and camera-to-world poses in float64, no float32 4x4 inverse."""
    z = fx["z"]
    P = feature_projection_matrices(np.repeat(z["in_K_320x256_float64"][None], 4, 0), z["in_poses_c2w_float64"])
    grids = MVSNet.homography_grids(torch.from_numpy(P)[None], torch.from_numpy(z["in_depth_values"])[None], 64, 80)
    idx = z["out_variance_planes_index"].astype(int)
    assert np.abs(grids[0][:, idx].numpy() - z["out_grids_planes"]).max() < 5e-6


def test_variance_volume(fx, run):
    z = fx["z"]
    assert _rel(run["variance"], z["out_variance_planes"]) < 1e-4
    assert np.abs(run["variance_mean"] - z["out_variance_mean_over_hw"]).max() < 1e-5
    # given the official grids and features, the one-pass float32 variance is exact
    model = run["model"]
    with torch.inference_mode():
        v = model.variance_volume(torch.from_numpy(z["out_features"])[None],
                                  torch.from_numpy(z["out_grids_planes"])[None])
    np.testing.assert_array_equal(v[0].numpy(), z["out_variance_planes"])


def test_regularisation_and_outputs(fx, run):
    z, out = fx["z"], run["out"]
    assert _rel(run["logits"], z["out_cost_reg_logits_planes"]) < 1e-4
    assert np.abs(out["prob_volume"] - z["out_prob_volume"]).max() < 2e-5
    assert np.abs(out["expected_index"] - z["out_expected_index"]).max() < 2e-3
    assert np.abs(out["depth"] - z["out_depth"]).max() < 2e-4           # metres, depths 0.25..17.5
    # the confidence window starts at floor(E[index]); compare where our floor equals the official one
    same = out["expected_index"].astype(np.int64) == z["out_depth_index_floor"]
    assert same.mean() > 0.999
    assert np.abs(out["photometric_confidence"] - z["out_photometric_confidence"])[same].max() < 2e-5


def test_align_corners_false_matches_unmodified_official(fx):
    z = fx["z"]
    model = load_mvsnet(state_dict=fx["weights"]("refine_false"), align_corners=False)
    with torch.inference_mode():
        out = model(torch.from_numpy(z["in_imgs"])[None], torch.from_numpy(z["in_proj_matrices"])[None],
                    torch.from_numpy(z["in_depth_values"])[None])
    assert np.abs(out["depth"][0].numpy() - z["asis_depth"]).max() < 2e-4
    same = out["expected_index"][0].numpy().astype(np.int64) == z["asis_depth_index_floor"]
    assert same.mean() > 0.999
    assert np.abs(out["photometric_confidence"][0].numpy() - z["asis_photometric_confidence"])[same].max() < 2e-5


def test_resample_to_reference_uses_pixel_corner_scaling():
    h, w = 8, 10
    ramp = torch.arange(w, dtype=torch.float32)[None, None, None, :].expand(1, 1, h, w)
    up = resample_to_reference(ramp, (4 * h, 4 * w), (0.25, 0.25))[0, 0]
    x = torch.arange(4 * w, dtype=torch.float32)
    expected = torch.clamp(x / 4, max=w - 1)                    # full pixel x sits at quarter pixel x / 4
    assert torch.allclose(up, expected[None].expand(4 * h, -1), atol=1e-5)


def _hololens_frames(names):
    root = require_shared("data", "hololens-000")
    import cv2
    images = sorted((root / "images").glob("*.png"))
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    K = np.loadtxt(root / "K.txt")
    frames = []
    for name in names:
        i = [p.stem for p in images].index(name)
        rgb = cv2.cvtColor(cv2.imread(str(images[i])), cv2.COLOR_BGR2RGB)
        frames.append(Frame(image=rgb, K=K, T_world_cam=poses[i], name=name).resized(320, 256))
    return frames


def test_estimator_end_to_end_on_hololens(fx, tmp_path):
    frames = _hololens_frames(["00016", "00014", "00013", "00012"])
    ckpt = tmp_path / "model_000014.ckpt"          # the official layout: DataParallel keys inside {'model': ...}
    torch.save({"epoch": 14, "model": {"module." + k: v for k, v in fx["weights"]("refine_false").items()}}, ckpt)
    est = build(str(ckpt), device="cpu", min_depth=0.25, max_depth=20.0, n_planes=64)
    assert isinstance(est, MVSNetEstimator) and est.device.type == "cpu"
    res = est.estimate(frames[0], frames[1:], est.initial_state())
    assert res.depth.shape == (256, 320) and res.depth.dtype == np.float32
    assert res.confidence.shape == (256, 320) and res.confidence.dtype == np.float32
    assert np.isfinite(res.depth).all()
    assert res.depth.min() >= 0.25 - 1e-4 and res.depth.max() <= 20.0 + 1e-4
    assert res.confidence.min() >= 0.0 and res.confidence.max() <= 1.0
    assert res.depth.std() > 0.1                     # not a constant map
    np.testing.assert_allclose(res.K, frames[0].K)
    assert res.info["n_views"] == 4 and res.info["n_planes"] == 64
    # features are cached by Frame.uid: a second call re-encodes nothing and gives the same result
    misses = est.cache.misses
    again = est.estimate(frames[0], frames[1:3])
    assert est.cache.misses == misses and est.cache.hits >= 3
    assert again.info["n_views"] == 3
    with pytest.raises(ValueError, match="multiple of 8"):
        MVSNetEstimator(est.model, device="cpu", n_planes=100)
    with pytest.raises(ValueError, match="multiples of 32"):
        est.estimate(frames[0].resized(300, 256), [frames[1].resized(300, 256)])


def test_build_requires_checkpoint():
    with pytest.raises(ValueError, match="checkpoint"):
        build(None)


def test_compiled_variance_volume_matches_torch(monkeypatch):
    """The numba variance kernel (CPU) against the torch grid_sample path on grids reaching outside the image
    (zeros padding) and with non-finite coordinates (z <= 0 is not masked): equal up to float rounding (in
    practice bit-equal: the same operations in the same order)."""
    from mvs_depth_ros.models import mvsnet as mv
    if not mv.mvsnet_numba.AVAILABLE:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 3, 8, 9, 11, generator=g)
    grids = torch.rand(1, 2, 5, 9, 11, 2, generator=g) * 2.6 - 1.3
    grids[0, 0, 1, 2, 3, 0] = float("nan")
    grids[0, 1, 2, 4, 5, 1] = float("inf")
    grids[0, 1, 3, 0, 0] = torch.tensor([-1.0, 1.0])                       # exactly on the image corners
    model = MVSNet()
    with torch.inference_mode():
        got = model.variance_volume(feats, grids)
        monkeypatch.setattr(mv.mvsnet_numba, "AVAILABLE", False)
        ref = model.variance_volume(feats, grids)
    assert got.shape == ref.shape == (1, 8, 5, 9, 11)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.isnan(ref).any()
