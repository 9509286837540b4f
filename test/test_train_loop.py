"""Training loop: gradients reach the networks, checkpoints drop into the loaders, resume is exact."""
import csv

import numpy as np
import pytest
import torch

from mvs_depth_ros.models.checkpoints import load_checkpoint
from mvs_depth_ros.models.registry import create_model
from mvs_depth_ros.train.adapters import create_adapter
from mvs_depth_ros.train.checkpointing import save_official
from mvs_depth_ros.train.data import (SampleOrder, collate, frames_from_synthetic, keyframe_samples,
                                      strip_ground_truth)
from mvs_depth_ros.train.loop import TrainConfig, Trainer
from mvs_depth_ros.train.losses import SelfSupervisedLoss, SupervisedLoss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def samples64():
    return keyframe_samples(frames_from_synthetic(24, 64, 64, seed=0), 64, 64, 2)


@pytest.fixture(scope="module")
def samples32():
    return keyframe_samples(frames_from_synthetic(24, 32, 32, seed=0), 32, 32, 2)


# ---------------------------------------------------------------------------------------------- data
def test_keyframe_samples_follow_the_inference_buffer(samples64):
    from mvs_depth_ros.core.keyframes import KeyframeBuffer, KeyframeStatus
    frames = frames_from_synthetic(24, 64, 64, seed=0)
    buf, expected = KeyframeBuffer(), []
    for f in frames:
        if buf.offer(f) == KeyframeStatus.KEYFRAME and len(buf.measurement_frames(2)) == 2:
            expected.append((f.name, [m.name for m in buf.measurement_frames(2)]))
    assert [(s.reference.name, [m.name for m in s.measurements]) for s in samples64] == expected
    assert len(expected) >= 3


def test_sample_order_is_deterministic_and_covers_each_epoch():
    a, b = SampleOrder(7, 3, seed=5), SampleOrder(7, 3, seed=5)
    seq = [i for k in range(7) for i in a.batch(k)]          # 3 epochs
    assert seq == [i for k in range(7) for i in b.batch(k)]
    assert sorted(seq[:7]) == list(range(7)) and sorted(seq[7:14]) == list(range(7))
    assert seq != [i for k in range(7) for i in SampleOrder(7, 3, seed=6).batch(k)]


def test_collate_and_ground_truth_stripping(samples64):
    b = collate(samples64[:2])
    assert b["images"].shape == (2, 3, 3, 64, 64) and b["depth_gt"].shape == (2, 1, 64, 64)
    assert float(b["images"].max()) <= 1.0 and b["T_world_cam"].dtype == torch.float64
    stripped = strip_ground_truth(samples64[0].frames)
    assert all(f.depth_gt is None for f in stripped)
    assert "depth_gt" not in collate(keyframe_samples(stripped + strip_ground_truth(
        [f for s in samples64 for f in s.frames]), 64, 64, 2)[:1])


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name,size", [("itermvs", 64), ("patchmatchnet", 32), ("dvmvs_pairnet", 64),
                                       ("dvmvs_fusionnet", 64)])
def test_gradients_flow_to_network_parameters(name, size, samples64, samples32):
    torch.manual_seed(0)
    samples = samples64 if size == 64 else samples32
    ad = create_adapter(name, CPU)
    ad.train()
    batch = collate(samples[:1])
    out = ad.forward(batch)
    assert out.depths[0].shape == (1, 1, size, size) and out.depths[0].requires_grad
    loss = SupervisedLoss(ad.min_depth, ad.max_depth, inverse=name != "patchmatchnet")(out.depths, batch)["loss"]
    loss = loss + SelfSupervisedLoss()(out.depths[:1], batch)["loss"]
    loss.backward()
    feat = ad.feature_parameters()
    rest = [p for p in ad.net.parameters() if all(p is not q for q in feat)]
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in feat)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in rest)
    assert all(torch.isfinite(p.grad).all() for p in ad.net.parameters() if p.grad is not None)
    # stage 1 of the two-stage schedule: the feature extractor gets no gradient, the rest still does
    ad.net.zero_grad(set_to_none=True)
    ad.set_features_frozen(True)
    out = ad.forward(batch)
    SupervisedLoss(ad.min_depth, ad.max_depth, inverse=name != "patchmatchnet")(out.depths, batch)["loss"].backward()
    assert all(p.grad is None for p in feat)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in rest)


# ---------------------------------------------------------------------------------- checkpoint round trip
@pytest.mark.parametrize("name", ["itermvs", "dvmvs_pairnet", "dvmvs_fusionnet", "patchmatchnet"])
def test_checkpoint_round_trip_into_create_model(name, tmp_path, samples64):
    torch.manual_seed(1)
    ad = create_adapter(name, CPU)
    # move away from the constructor's weights so the test sees the saved ones, not a fresh init
    with torch.no_grad():
        for p in ad.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_official(ad, tmp_path / ("weights" if ad.checkpoint_kind == "folder" else "model.ckpt"),
                         torch.optim.AdamW(ad.net.parameters()), epoch=3)
    if ad.checkpoint_kind == "file":
        raw = load_checkpoint(str(path))                               # weights_only
        assert set(raw) == {"model", "optimizer", "epoch"} and raw["epoch"] == 3
        assert all(k.startswith("module.") for k in raw["model"])
    else:
        assert sorted(p.name for p in path.iterdir()) == [s for s, _ in ad.net.module_files]
    est = create_model(name, checkpoint=str(path), device="cpu")       # strict loading
    for k, v in ad.net.state_dict().items():
        assert torch.equal(est.net.state_dict()[k], v), k
    if name == "patchmatchnet":
        return  # its random initialisation differs between the adapter's generator and the estimator's seed
    # same preprocessing: the adapter's eval-mode depth is the estimator's depth
    s = samples64[0]
    ad.eval()
    with torch.no_grad():
        d_train = ad.forward(collate([s])).depths[0][0, 0].numpy()
    d_inf = est.estimate(s.reference, s.measurements, est.initial_state()).depth
    ok = np.isfinite(d_inf)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(d_train[ok], d_inf[ok], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ resume
def _cfg(tmp, steps, **kw):
    return TrainConfig(model="patchmatchnet", out_dir=str(tmp), loss="both", steps=steps, batch_size=1, lr=1e-3,
                       seed=3, device="cpu", progress=False, freeze_features_steps=1, **kw)


def test_resume_continues_identically(tmp_path, samples32):
    samples = samples32[:3]
    full = Trainer(_cfg(tmp_path / "full", 4), samples).run()["history"]
    Trainer(_cfg(tmp_path / "part", 2), samples).run()
    torch.manual_seed(12345)                                          # resuming restores the RNG itself
    resumed = Trainer(_cfg(tmp_path / "part", 4), samples).run(resume=True)["history"]
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in full[2:]] == [r["loss"] for r in resumed]
    assert [r["frozen"] for r in full] == [1, 0, 0, 0]
    assert len({r["loss"] for r in full}) == 4
    with open(tmp_path / "part" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    a = load_checkpoint(str(tmp_path / "full" / "model_000004.ckpt"))["model"]
    b = load_checkpoint(str(tmp_path / "part" / "model_000004.ckpt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_amp_is_cuda_only(tmp_path, samples32):
    t = Trainer(_cfg(tmp_path, 1, amp=True), samples32[:1])
    assert not t.use_amp and not t.scaler.is_enabled()


def test_cli_train_and_finetune(tmp_path):
    from mvs_depth_ros.apps.train import finetune_main, main
    out = tmp_path / "run"
    assert main(["--synthetic", "16", "--width", "32", "--height", "32", "--model", "patchmatchnet", "--steps", "1",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert (out / "model_000001.ckpt").is_file() and (out / "train_state.pt").is_file()
    ft = tmp_path / "ft"
    assert finetune_main(["--synthetic", "30", "--width", "32", "--height", "32", "--model", "patchmatchnet",
                          "--checkpoint", str(out / "model_000001.ckpt"), "--train-frames", "0:15",
                          "--eval-frames", "15:30", "--steps", "1", "--out", str(ft), "--device", "cpu",
                          "--no-progress"]) == 0
    import json
    rep = json.loads((ft / "finetune_report.json").read_text())
    assert rep["eval_keyframes"] >= 1 and "depth" in rep["before"] and "depth" in rep["after"]
    assert rep["before"]["photometric"] > 0
    assert finetune_main(["--synthetic", "30", "--model", "patchmatchnet", "--checkpoint", "x",
                          "--train-frames", "0:20", "--eval-frames", "10:30", "--out", str(ft)]) == 2


def test_samples_from_a_rosbag2(tmp_path):
    """A converted bag gives the same keyframe samples (names, poses, ground truth) as the frames it holds."""
    from mvs_depth_ros.data.bags import write_bag
    from mvs_depth_ros.train.data import frames_from_bag
    frames = frames_from_synthetic(16, 32, 32, seed=0)
    write_bag(frames, tmp_path / "bag")
    got = keyframe_samples(frames_from_bag(tmp_path / "bag"), 32, 32, 2)
    want = keyframe_samples(frames, 32, 32, 2)
    assert [s.reference.name for s in got] == [s.reference.name for s in want] and got
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.reference.T_world_cam, b.reference.T_world_cam, atol=1e-9)
        assert a.has_gt
