"""DeepVideoMVS pairnet / fusionnet: checkpoint layout, loading, conformance to the official outputs
(``shared/fixtures/dvmvs``, produced by the official code) and the estimator interface end to end."""
from __future__ import annotations

import importlib.util
import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import require_shared
from mvs_depth_ros.core.frame import Frame
from mvs_depth_ros.models.checkpoints import CheckpointError
from mvs_depth_ros.models.dvmvs import DVMVSNet, build_fusionnet, build_pairnet
from mvs_depth_ros.models.dvmvs.checkpoint import load_module_state, upgrade_legacy_fpn_keys
from mvs_depth_ros.models.dvmvs.warps import reproject_depth_farthest

NETS = {"pairnet": False, "fusionnet": True}
SCALES = ("full", "half", "quarter", "one_eight", "one_sixteen")
#: README table of the fixture: (crc32, float64 sum) of the rule's weights per module file
CHECKSUMS = {
    "0_feature_extractor": (1127972397, 36764.18162955368), "1_feature_pyramid": (2006805680, -19.06932882958173),
    "2_encoder": (4249648502, 6979.117270265758), "3_decoder": (1913281799, 3182.4122722544234),
    "3_lstm_fusion": (1002955321, 56.52345383056482), "4_decoder": (1913281799, 3182.4122722544234)}
RTOL = 1e-4


def rel_err(actual, expected) -> float:
    """max |a - e| / max |e| (float32 implementations agree to ~1e-5 on this measure)."""
    a = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    e = np.asarray(expected)
    return float(np.abs(a.reshape(e.shape) - e).max() / np.abs(e).max())


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fixture_dir():
    return require_shared("fixtures", "dvmvs")


@pytest.fixture(scope="module")
def rule(fixture_dir):
    spec = importlib.util.spec_from_file_location("dvmvs_weight_rule", fixture_dir / "weight_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest(fixture_dir):
    return json.loads((fixture_dir / "state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return np.load(fixture_dir / "golden_inputs.npz"), np.load(fixture_dir / "golden_outputs.npz")


@pytest.fixture(scope="module")
def weight_folders(rule, manifest, tmp_path_factory):
    """The rule's weights written as official module files (FPN under its legacy 2021 key names)."""
    folders = {}
    for net in NETS:
        folder = tmp_path_factory.mktemp(net)
        for module_file in manifest[net]:
            sd = {k: torch.from_numpy(v) for k, v in rule.state_dict(net, module_file).items()}
            if module_file == "1_feature_pyramid":
                sd = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"): v for k, v in sd.items()}
            torch.save(sd, folder / module_file)
        folders[net] = folder
    return folders


@pytest.fixture(scope="module")
def nets(weight_folders):
    return {net: DVMVSNet(fusion).load_official(str(weight_folders[net])) for net, fusion in NETS.items()}


def run_steps(net, golden_inputs, steps=range(5), carry_state=True):
    """Feed the fixture's network-ready images, float32 poses and K; returns the StepOutputs.
    Features of the frames involved are extracted once, in one batch (bitwise equal to one at a time on CPU)."""
    images = torch.from_numpy(golden_inputs["images_net_float32"])
    poses = torch.from_numpy(golden_inputs["poses_c2w_float32"])
    K = torch.from_numpy(golden_inputs["K_full_320x256"])
    outs, state = [], None
    with torch.inference_mode():
        used = sorted({int(i) for s in steps for i in (golden_inputs["step_reference"][s],
                                                      *golden_inputs["step_measurements"][s])})
        row = {frame: n for n, frame in enumerate(used)}
        features = net.features(images[used])
        for s in steps:
            r, ms = int(golden_inputs["step_reference"][s]), golden_inputs["step_measurements"][s]
            out = net.step(images[r:r + 1], [f[row[r]:row[r] + 1] for f in features],
                           [features[0][row[m]:row[m] + 1] for m in ms],
                           poses[r], [poses[m] for m in ms], K, state if carry_state else None)
            state = out.state
            outs.append(out)
    return outs


#: pairnet steps are independent: step 0 (all intermediates are stored for it) and one later step
PAIRNET_STEPS = (0, 3)


@pytest.fixture(scope="module")
def pairnet_run(nets, golden):
    return run_steps(nets["pairnet"], golden[0], steps=PAIRNET_STEPS)


@pytest.fixture(scope="module")
def fusionnet_run(nets, golden):
    return run_steps(nets["fusionnet"], golden[0])


# ------------------------------------------------------------------------------- weights and loading
def test_weight_rule_reproduces_fixture_checksums(rule, manifest):
    for net in NETS:
        for module_file in manifest[net]:
            crc, total = 0, 0.0
            for a in rule.state_dict(net, module_file).values():
                crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
                total += float(np.sum(a.astype(np.float64)))
            assert (crc, total) == pytest.approx(CHECKSUMS[module_file], rel=1e-12), (net, module_file)


def test_module_trees_match_official_state_dict_keys(manifest):
    for net, fusion in NETS.items():
        model = DVMVSNet(fusion)
        for module_file, attr in model.module_files:
            ours = [(k, list(v.shape)) for k, v in getattr(model, attr).state_dict().items()]
            official = [(e["key"], e["shape"]) for e in manifest[net][module_file]["entries"]]
            assert ours == official, (net, module_file)


def test_real_feature_pyramid_files_load_strictly(manifest):
    legacy = [e["key"] for e in manifest["1_feature_pyramid_legacy_keys_from_real_file"]]
    assert list(upgrade_legacy_fpn_keys(dict.fromkeys(legacy))) == \
        [e["key"] for e in manifest["pairnet"]["1_feature_pyramid"]["entries"]]
    for net, fusion in NETS.items():
        path = require_shared("weights", "dvmvs", net, "1_feature_pyramid")
        model = DVMVSNet(fusion)
        before = model.feature_shrinker.fpn.inner_blocks[0][0].weight.clone()
        load_module_state(model.feature_shrinker, str(path), what="FPN")
        assert not torch.equal(before, model.feature_shrinker.fpn.inner_blocks[0][0].weight)


def test_checkpoint_errors_are_clear(weight_folders, tmp_path):
    with pytest.raises(CheckpointError, match="missing .*0_feature_extractor, 1_feature_pyramid, 2_encoder, 3_decoder"):
        build_pairnet(str(tmp_path), device="cpu")           # empty folder: first missing module named
    with pytest.raises(CheckpointError, match="3_lstm_fusion.*holds the pairnet weights"):
        build_fusionnet(str(weight_folders["pairnet"]), device="cpu")
    with pytest.raises(CheckpointError, match="must be a folder"):
        build_pairnet(str(weight_folders["pairnet"] / "2_encoder"), device="cpu")
    with pytest.raises(ValueError, match="official weights"):
        build_pairnet(None, device="cpu")
    # a wrong tensor shape is reported by key
    sd = torch.load(weight_folders["pairnet"] / "2_encoder", weights_only=True)
    sd["aggregator0.0.weight"] = sd["aggregator0.0.weight"][:, :64]
    model = DVMVSNet(False)
    torch.save(sd, tmp_path / "2_encoder")
    with pytest.raises(CheckpointError, match=r"aggregator0\.0\.weight.*\(32, 64, 5, 5\)"):
        load_module_state(model.cost_volume_encoder, str(tmp_path / "2_encoder"), what="encoder")


# ---------------------------------------------------------------------------------------- conformance
def test_pairnet_conformance(pairnet_run, golden):
    _, expected = golden
    step0 = pairnet_run[0]
    for i, name in enumerate(("half", "quarter", "one_eight", "one_sixteen")):
        assert rel_err(step0.features[i], expected[f"pairnet_step0_feature_{name}"]) < RTOL, name
    assert rel_err(step0.cost_volume, expected["pairnet_step0_cost_volume"]) < RTOL
    for i in range(4):
        assert rel_err(step0.skips[i], expected[f"pairnet_step0_skip{i}"]) < RTOL, i
    assert rel_err(step0.bottom, expected["pairnet_step0_bottom"]) < RTOL
    for s, out in zip(PAIRNET_STEPS, pairnet_run):
        for i, scale in enumerate(SCALES):
            assert rel_err(out.depths[i], expected[f"pairnet_depth_{scale}"][s]) < RTOL, (s, scale)
        assert out.state is None


def test_fusionnet_recurrent_conformance(fusionnet_run, golden):
    _, expected = golden
    for s, out in enumerate(fusionnet_run):
        assert rel_err(out.bottom, expected["fusionnet_bottom"][s]) < RTOL, s
        assert rel_err(out.state.hidden, expected["fusionnet_hidden"][s]) < RTOL, s
        assert rel_err(out.state.cell, expected["fusionnet_cell"][s]) < RTOL, s
        for i, scale in enumerate(SCALES):
            assert rel_err(out.depths[i], expected[f"fusionnet_depth_{scale}"][s]) < RTOL, (s, scale)
        # the splatted previous depth: same cells filled, same winning points (values carry the ~1e-6
        # difference of the previous prediction)
        ours = out.depth_estimation.numpy()[0]
        ref = expected["fusionnet_depth_estimation"][s]
        np.testing.assert_array_equal(ours > 0, ref > 0)
        np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=0)
    assert not np.any(expected["fusionnet_depth_estimation"][0])
    # the recurrent path matters: the hidden state at step 4 differs from a fresh one
    assert rel_err(fusionnet_run[4].state.hidden, expected["fusionnet_hidden"][0]) > 0.1


def test_previous_depth_splat_is_exact_on_official_depth(golden):
    """Splat the official previous prediction: the discrete choice (round, farthest point wins) must give
    the official cells; values agree to float32 pose-inverse rounding (a few ulps)."""
    inputs, expected = golden
    poses = torch.from_numpy(inputs["poses_c2w_float32"])
    K, K_half = torch.from_numpy(inputs["K_full_320x256"]), torch.from_numpy(inputs["K_half_160x128"])
    for s in range(1, 5):
        previous = torch.from_numpy(expected["fusionnet_depth_full"][s - 1])[None, None]
        splat = reproject_depth_farthest(previous, poses[inputs["step_reference"][s - 1]],
                                         poses[inputs["step_reference"][s]], K, K_half, (128, 160))
        ours = F.interpolate(splat, scale_factor=1 / 16, mode="nearest").numpy()[0]
        ref = expected["fusionnet_depth_estimation"][s]
        np.testing.assert_array_equal(ours > 0, ref > 0)
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=0)
        # nearest-wins would pick other points on this data: the quirk is really exercised
        assert 0.5 < (ref > 0).mean() < 1.0


def test_fusionnet_reset_each_step_conformance(nets, fusionnet_run, golden):
    inputs, expected = golden
    steps = (3,)                             # without a carried state every step stands alone
    reset = run_steps(nets["fusionnet"], inputs, steps=steps, carry_state=False)
    for s, out in zip(steps, reset):
        assert rel_err(out.depths[0], expected["fusionnet_depth_full_state_reset_each_step"][s]) < RTOL, s
        differs = rel_err(fusionnet_run[s].depths[4], out.depths[4].numpy())
        assert differs > 1e-3 if s else differs == 0.0, (s, differs)


# ------------------------------------------------------------------------------------ estimator API
def _frames(inputs):
    frames = [Frame(image=inputs["images_raw_rgb_uint8"][i], K=inputs["K_raw_540x360"],
                    T_world_cam=inputs["poses_c2w_float64"][i], name=str(inputs["frame_names"][i]))
              for i in range(len(inputs["frame_names"]))]
    return [f.resized(320, 256) for f in frames]


def _steps(inputs, frames, n):
    return [(frames[inputs["step_reference"][s]], [frames[m] for m in inputs["step_measurements"][s]])
            for s in range(n)]


def test_fusionnet_estimator_end_to_end(weight_folders, golden):
    inputs, expected = golden
    est = build_fusionnet(str(weight_folders["fusionnet"]), device="cpu")
    assert est.recurrent and est.initial_state() is None
    frames = _frames(inputs)
    steps = _steps(inputs, frames, 2)
    state, results = est.initial_state(), []
    for ref, meas in steps:
        res = est.estimate(ref, meas, state)
        state = res.state
        results.append(res)
        assert res.depth.shape == res.confidence.shape == (256, 320) and res.depth.dtype == np.float32
        assert np.all((res.confidence >= 0) & (res.confidence <= 1))
        assert np.all((res.depth >= 0.25) & (res.depth <= 20))
    # uint8 frames (rounded resize) vs the fixture's float images: close to the official prediction
    for s, res in enumerate(results):
        err = np.abs(res.depth - expected["fusionnet_depth_full"][s]) / expected["fusionnet_depth_full"][s]
        assert err.mean() < 0.01, (s, err.mean())
    # initial_state() before a step = the official reset-each-step variant
    reset = est.estimate(*steps[1], est.initial_state())
    expected_reset = expected["fusionnet_depth_full_state_reset_each_step"][1]
    assert (np.abs(reset.depth - expected_reset) / expected_reset).mean() < 0.01
    assert not np.array_equal(reset.depth, results[1].depth)          # the carried state was used
    with pytest.raises(ValueError, match="reset the state"):
        est.estimate(frames[0].resized(160, 128), [frames[1].resized(160, 128)], state)


def test_pairnet_estimator_depth_range_and_cache(weight_folders, golden):
    """At 160x128 (any size divisible by 32 runs; kept small for speed): range masking and the cache."""
    inputs, _ = golden
    frames = [f.resized(160, 128) for f in _frames(inputs)]
    (ref, meas), = _steps(inputs, frames, 1)
    est = build_pairnet(str(weight_folders["pairnet"]), device="cpu", min_depth=0.5, max_depth=3.0)
    assert not est.recurrent
    first = est.estimate(ref, meas, est.initial_state())               # measurement features: cache misses
    assert first.state is None and set(est._cache) == {ref.uid, *(m.uid for m in meas)}
    again = est.estimate(ref, meas, None)                               # now all from the cache
    np.testing.assert_array_equal(first.depth, again.depth)
    valid = np.isfinite(first.depth)
    assert first.depth.shape == (128, 160) and 0.2 < valid.mean() < 1.0
    assert np.all((first.depth[valid] >= 0.5) & (first.depth[valid] <= 3.0))
    with pytest.raises(ValueError, match="divisible by 32"):
        est.estimate(frames[0].resized(300, 200), [frames[1].resized(300, 200)])


def test_confidence_map_semantics():
    """coverage x head agreement: 1 where heads agree and every plane sample is seen, 0 where none is."""
    from mvs_depth_ros.models.dvmvs import StepOutput, confidence_map
    sig_half = torch.full((1, 1, 4, 6), 0.3)
    sig_full = torch.full((1, 1, 8, 12), 0.3)
    coverage = torch.ones(4, 6)
    coverage[:, :3] = 0.0
    out = StepOutput(depths=[], sigmoids=[sig_full, sig_half], cost_volume=None, skips=(), bottom=None,
                     coverage=coverage)
    conf = confidence_map(out).numpy()
    assert conf.shape == (8, 12) and conf[:, 0].max() == 0.0 and conf[:, -1].min() == pytest.approx(1.0, rel=1e-4)
    out.sigmoids = [sig_full + 2.0 / 63, sig_half]          # full head two planes away from the half head
    assert confidence_map(out).numpy()[:, -1] == pytest.approx(np.exp(-2.0), rel=1e-4)
