"""Evaluator: online metrics equal the offline metrics functions; bad inputs are counted, not fatal."""
import json
import os
import time

import numpy as np
import pytest

from mvs_depth_ros.core.frame import DepthResult
from mvs_depth_ros.data.synthetic import render_sequence
from mvs_depth_ros.eval import metrics as M
from mvs_depth_ros.ros.evaluator_node import EvaluatorConfig, EvaluatorCore

W, H = 48, 32   # prediction resolution; ground truth is rendered at 96x64


@pytest.fixture(scope="module")
def frames():
    return render_sequence(n_frames=6, width=96, height=64, seed=5).frames


def fake_prediction(frame, i):
    """A deterministic imperfect prediction at the working resolution (what an estimator returns)."""
    rng = np.random.default_rng(i)
    gt = frame.resized(W, H).depth_gt
    depth = (gt * rng.uniform(0.8, 1.25, gt.shape)).astype(np.float32)
    depth[rng.random(gt.shape) < 0.1] = np.nan
    depth[0, :3] = (0.0, 0.1, 50.0)          # below / above the clip range: clipping must match
    conf = rng.random(gt.shape).astype(np.float32)
    return depth, conf


def offline(frames, keyframes, cfg):
    """What ``mvs-depth run`` computes for these predictions (same functions, same GT resizing)."""
    dense, filt = [], []
    for i in keyframes:
        depth, conf = fake_prediction(frames[i], i)
        gt = frames[i].resized(W, H).depth_gt
        clip = (cfg.min_depth, cfg.max_depth)
        dense.append(M.depth_metrics(depth, gt, min_gt=cfg.min_gt, clip=clip))
        filtered = DepthResult(depth, conf, np.eye(3)).filtered(cfg.confidence_threshold)
        filt.append(M.depth_metrics(filtered, gt, min_gt=cfg.min_gt, clip=clip))
    return dense, filt


def test_core_matches_offline_and_writes_contract(tmp_path, frames):
    cfg = EvaluatorConfig(min_gt=0.5, min_depth=0.25, max_depth=20.0, confidence_threshold=0.3,
                          output_dir=str(tmp_path / "eval"))
    names = {f.stamp: f.name for f in frames}
    core = EvaluatorCore(cfg, names)
    keyframes = [1, 3, 4]
    for i, f in enumerate(frames):       # GT for every frame, predictions for keyframes, a little later
        core.add_ground_truth(f.stamp, f.depth_gt)
        if i - 1 in keyframes:
            d, c = fake_prediction(frames[i - 1], i - 1)
            core.add_prediction(frames[i - 1].stamp, d, c, measurement_stamps=[frames[i - 2].stamp], ms=12.5)
    core.finish()
    dense, filt = offline(frames, keyframes, cfg)
    assert [r["name"] for r in core.per_frame] == [frames[i].name for i in keyframes]
    for row, d, f in zip(core.per_frame, dense, filt):
        assert row["dense"] == d and row["filtered"] == f        # bit-identical
    s = core.summary()
    assert s["dense"] == M.aggregate(dense) and s["filtered"] == M.aggregate(filt)
    c = core.counters
    assert (c.evaluated, c.prediction_without_gt, c.gt_without_prediction, c.bad_messages) == (3, 0, 2, 0)

    out = core.write()
    data = json.loads((out / "metrics.json").read_text())
    assert data["summary"]["dense"]["abs_rel"] == pytest.approx(M.aggregate(dense)["abs_rel"], abs=1e-12)
    assert data["per_frame"][0]["measurements"] == [frames[0].name]
    stem = frames[3].name
    d3, c3 = fake_prediction(frames[3], 3)
    np.testing.assert_array_equal(np.load(out / "depth" / f"{stem}.npy"), d3)
    np.testing.assert_array_equal(np.load(out / "confidence" / f"{stem}.npy"), c3)
    assert (out / "keyframes.txt").read_text().splitlines()[1] == f"{stem}.png {frames[2].name}.png"


def test_core_counts_bad_input(frames):
    warned = []
    core = EvaluatorCore(EvaluatorConfig(match_tolerance_ns=1000, max_pending=3),
                         warn=lambda key, text: warned.append(key))
    f0, f1, f2 = frames[:3]
    d, c = fake_prediction(f1, 1)
    core.add_ground_truth(f1.stamp + 500, f1.depth_gt)              # within tolerance
    core.add_prediction(f1.stamp, d, c)
    assert core.counters.evaluated == 1
    core.add_prediction(f1.stamp, d, c)                              # duplicate
    core.add_prediction(f0.stamp, d, c[:2])                          # backwards, bad confidence shape
    core.add_ground_truth(f2.stamp, f2.depth_gt)                     # GT moved past f0: f0 has no GT
    core.add_ground_truth(f0.stamp, f0.depth_gt)                     # GT backwards
    for k in range(5):                                               # predictions that never get GT
        core.add_prediction(f2.stamp + 10**6 * (k + 1), d)
    core.finish()
    c = core.counters
    assert c.duplicates == 1 and c.stamps_backwards == 2 and c.bad_messages == 1
    # f0 and the three newest have no GT; the two oldest of the five did not fit in max_pending
    assert c.prediction_without_gt == 4 and c.evicted == 2 and c.evaluated == 1
    assert {"duplicate", "backwards", "shape", "no_gt", "evicted"} <= set(warned)
    assert core.summary()["keyframes"] == 1


# --------------------------------------------------------------------------------- over real DDS
rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: install the ROS 2 wheels (tools/install_ros.sh)")


@pytest.fixture
def ros_context():
    from ros_helpers import apply_ros_env, require_rclpy
    require_rclpy()
    apply_ros_env()      # LOCALHOST discovery, the project's DDS profile, a per-run domain id
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def test_node_over_dds_matches_offline(tmp_path, frames, ros_context):
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from mvs_depth_ros.data import bags
    from mvs_depth_ros.ros.evaluator_node import EvaluatorNode

    bag = tmp_path / "bag"
    bags.write_bag(frames, bag, start_ns=frames[0].stamp)   # only for the frame names
    names = bags.frame_names(bag)
    out = tmp_path / "eval"
    node = EvaluatorNode(context=ros_context, prediction_type="image", prediction_topic="/pred/depth",
                         confidence_topic="/pred/confidence", gt_topic="/camera/depth_gt",
                         output_dir=str(out), names_bag=str(bag), confidence_threshold=0.3, log_every=1)
    src = rclpy.create_node("fake_estimator", context=ros_context)
    pubs = {t: src.create_publisher(Image, t, 20) for t in ("/pred/depth", "/pred/confidence", "/camera/depth_gt")}
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    ex.add_node(src)
    deadline = time.monotonic() + 10
    while any(p.get_subscription_count() < 1 for p in pubs.values()) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)

    def to_msg(a, stamp):
        # through the bag writer's message layout, then CDR bytes: exactly what the player publishes
        ts = bags.typestore()
        return bytes(ts.serialize_cdr(bags.image_msg(a, stamp, "camera_optical_frame"), bags.IMAGE_T))

    keyframes = [1, 3, 4]
    for i, f in enumerate(frames):
        pubs["/camera/depth_gt"].publish(to_msg(f.depth_gt, f.stamp))
        if i in keyframes:
            d, c = fake_prediction(f, i)
            pubs["/pred/confidence"].publish(to_msg(c, f.stamp))   # confidence first: pairing must wait
            pubs["/pred/depth"].publish(to_msg(d, f.stamp))
        ex.spin_once(timeout_sec=0.01)
    # a malformed prediction (with its confidence: depth and confidence are paired first): counted, not fatal
    bad = Image(height=4, width=4, encoding="32FC1", step=16)
    bad.header.stamp.sec = 1
    pubs["/pred/confidence"].publish(bad)
    pubs["/pred/depth"].publish(bad)
    deadline = time.monotonic() + 10
    while (node.core.counters.evaluated < 3 or node.core.counters.bad_messages < 1) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    node.destroy_node()   # finishes and writes
    src.destroy_node()

    cfg = node.config
    dense, filt = offline(frames, keyframes, cfg)
    data = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in data["per_frame"]] == [frames[i].name for i in keyframes]
    for row, d, f in zip(node.core.per_frame, dense, filt):
        assert row["dense"] == d and row["filtered"] == f
    agg = M.aggregate(dense)
    for k, v in data["summary"]["dense"].items():
        assert v == pytest.approx(agg[k], abs=1e-9)
    assert data["summary"]["evaluator"]["bad_messages"] == 1
    assert names[frames[1].stamp] == frames[1].name


def test_config_files_hold_declared_valid_parameters(ros_context):
    """config/evaluator.yaml and every dataset file: names the node declares, values it accepts."""
    from mvs_depth_ros.ros import runner

    from mvs_depth_ros.data.paths import REPO_ROOT
    from mvs_depth_ros.ros.evaluator_node import EvaluatorNode
    files = [REPO_ROOT / "config" / "evaluator.yaml", *sorted((REPO_ROOT / "config" / "datasets").glob("*.yaml"))]
    assert len(files) >= 4
    for f in files:
        params = runner.yaml_parameters(f, "evaluator")   # the node name of eval_bag.launch.py
        assert params, f"{f}: no section selects /evaluator"
        params = {**params, "prediction_type": "image"}   # DepthEstimate may not be generated here
        node = EvaluatorNode(context=ros_context, **params)
        try:
            assert all(node.has_parameter(k) for k in params), f
            assert node.config.min_depth == params.get("min_depth", 0.25)
        finally:
            node.destroy_node()


# ------------------------------------------------------------------------------ the graph across processes
RGBD_TOPICS = dict(image="/camera/color/image_raw", camera_info="/camera/color/camera_info",
                   depth_gt="/camera/aligned_depth_to_color/image_raw")
RGBD_FRAME = "camera_color_optical_frame"
SMALL = ["mvs_node.device:=cpu", "mvs_node.width:=160", "mvs_node.height:=128", "mvs_node.n_planes:=16"]


def _rgbd_bag(tmp_path, n=14, drop_last_pose=False):
    """A synthetic bag (exact depth) with an RGB-D camera's topic and frame names."""
    from mvs_depth_ros.data.bag_topics import BagFrames, BagTopics
    from mvs_depth_ros.data.bags import write_bag
    seq = render_sequence(n_frames=n, width=160, height=128, supersample=1)
    frames = list(seq.frames)
    if drop_last_pose:   # the last image gets no /tf: its pose never comes
        frames[-1] = _posed(frames[-1], None)
    bag = tmp_path / "rgbd_bag"
    write_bag(frames, bag, topics=BagTopics().with_(**RGBD_TOPICS),
              tf_frames=BagFrames(camera=RGBD_FRAME, mount="camera_link"))
    return bag


def _posed(frame, T):
    import dataclasses
    return dataclasses.replace(frame, T_world_cam=T)


def _offline(bag, out):
    from mvs_depth_ros.cli import main as cli_main
    assert cli_main(["run", "--bag", str(bag), "--width", "160", "--height", "128", "--device", "cpu",
                     "--model-option", "n_planes=16", "--pictures", "0", "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def _same_metrics(online, ref):
    assert ref["summary"]["keyframes"] == online["summary"]["keyframes"] == online["summary"]["evaluator"]["evaluated"]
    for kind in ("dense", "filtered"):
        for key, value in ref["summary"][kind].items():
            assert value == pytest.approx(online["summary"][kind][key], abs=1e-6), (kind, key)


def test_player_node_evaluator_in_separate_processes_equal_offline(tmp_path):
    """player, mvs_node and evaluator each in its own process, on a bag with an RGB-D camera's topic and frame
    names (remapped): images wait for the transform at their stamp, the graph ends by itself (evaluator exit 0
    once every frame is processed) and the metrics equal offline `mvs-depth run --bag` to 1e-6."""
    from ros_helpers import NodeProcess, require_rclpy
    require_rclpy()
    from mvs_depth_ros.ros import interfaces
    if not (interfaces.tf_message_available() and interfaces.depth_estimate_available()):
        pytest.skip("needs tf2_msgs and mvs_depth_ros/msg (tools/install_ros.sh builds them)")
    bag = _rgbd_bag(tmp_path)
    out = tmp_path / "eval"
    depth = dict(device="cpu", width=160, height=128, n_planes=16, use_sim_time=True, qos_reliability="reliable",
                 qos_depth=100, queue_size=100, frame_queue=1000, tf_timeout=60.0, end_of_bag_topic="/end_of_bag",
                 camera_frame=RGBD_FRAME)
    remaps = {"__ns": "/mvs", "image": RGBD_TOPICS["image"], "camera_info": RGBD_TOPICS["camera_info"]}
    evaluator = dict(use_sim_time=True, output_dir=str(out), names_bag=str(bag), gt_topic=RGBD_TOPICS["depth_gt"],
                     end_of_stream_topic="/mvs/end_of_stream", end_of_bag_topic="/end_of_bag", log_every=0)
    with NodeProcess("mvs_depth_ros.ros.mvs_node", depth, remaps=remaps) as node, \
            NodeProcess("mvs_depth_ros.ros.evaluator_node", evaluator) as ev:
        with NodeProcess("mvs_depth_ros.ros.player_node",
                         dict(bag=str(bag), wait_timeout=120.0, delay=1.0, wait_for_topics="[{}]".format(
                             ",".join([RGBD_TOPICS["image"], RGBD_TOPICS["camera_info"], RGBD_TOPICS["depth_gt"],
                                       "/tf"])))) as pl:
            assert pl.proc.wait(120) == 0, pl.output()[-3000:]
        rc = ev.proc.wait(180)
        log = ev.output()
        assert rc == 0, log[-3000:] + node.output()[-3000:]
        assert "evaluation complete" in log and "all 14 frames processed" in node.output(), node.output()[-3000:]
        assert node.alive()
        assert node.stop() == 0      # SIGINT: a clean end
        nlog = node.output()
    assert "Traceback" not in nlog + log and "context is invalid" not in nlog + log, nlog[-2000:]
    assert "counters:" in nlog       # logged while the context is still valid
    _same_metrics(json.loads((out / "metrics.json").read_text()), _offline(bag, tmp_path / "offline"))


def test_eval_bag_fails_with_counts_when_a_frame_never_gets_its_pose(tmp_path):
    """`mvs-depth launch eval-bag` with remapped topics: the last image's transform never comes; it waits
    tf_wait seconds, is dropped, and the run ends non-zero saying so (no silent exit 0)."""
    from ros_helpers import NodeProcess, require_rclpy
    require_rclpy()
    from mvs_depth_ros.ros import interfaces
    if not (interfaces.tf_message_available() and interfaces.depth_estimate_available()):
        pytest.skip("needs tf2_msgs and mvs_depth_ros/msg (tools/install_ros.sh builds them)")
    bag = _rgbd_bag(tmp_path, n=8, drop_last_pose=True)
    out = tmp_path / "eval"
    args = ["launch", "eval-bag", f"bag:={bag}", "dataset:=synthetic", f"output_dir:={out}", "tf_wait:=1.0",
            f"image:={RGBD_TOPICS['image']}", f"camera_info:={RGBD_TOPICS['camera_info']}",
            f"gt_depth:={RGBD_TOPICS['depth_gt']}", f"camera_frame:={RGBD_FRAME}", "gt_stamp_tolerance:=0.001",
            *SMALL, "--duration", "150"]
    with NodeProcess("mvs_depth_ros.cli", args=args) as proc:
        rc = proc.proc.wait(170)
        log = proc.output()
    assert rc == 1, log[-3000:]
    assert "1 dropped after waiting tf_timeout 1 s for their pose" in log and "evaluation INCOMPLETE" in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["evaluator"]["ground_truth"] == 8 and metrics["summary"]["keyframes"] >= 1


@pytest.mark.parametrize("module", ["mvs_depth_ros.ros.evaluator_node", "mvs_depth_ros.ros.mvs_node"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_nodes_end_cleanly_on_sigint_and_sigterm(module, sig, tmp_path):
    """One shutdown path (node_main.spin_node): exit 0, no traceback (evaluator_node used to die with
    ExternalShutdownException on SIGTERM), no 'context is invalid' rosout error, outputs written."""
    import signal

    from ros_helpers import NodeProcess, require_rclpy
    require_rclpy()
    params = dict(output_dir=str(tmp_path / "ev"), prediction_type="image") if "evaluator" in module else \
        dict(device="cpu", width=64, height=48)
    with NodeProcess(module, params) as proc:
        deadline = time.monotonic() + 60
        while "[INFO]" not in proc.output() and time.monotonic() < deadline and proc.alive():
            time.sleep(0.2)
        assert proc.alive(), proc.output()[-2000:]
        proc.proc.send_signal(getattr(signal, sig))
        rc = proc.proc.wait(30)
        log = proc.output()
    assert rc == 0, log[-2000:]
    assert "Traceback" not in log and "context is invalid" not in log and "Failed to publish" not in log, log[-2000:]
    if "evaluator" in module:
        assert (tmp_path / "ev" / "metrics.json").is_file() and "wrote" in log
    else:
        assert "counters:" in log


def test_eval_bag_fails_when_images_lack_their_camera_info(tmp_path):
    """Images whose camera_info never comes (here: camera_info remapped to a topic the bag lacks) are not
    silently skipped: the depth node's end report counts them and the run ends non-zero."""
    from ros_helpers import NodeProcess, require_rclpy
    require_rclpy()
    from mvs_depth_ros.ros import interfaces
    if not (interfaces.tf_message_available() and interfaces.depth_estimate_available()):
        pytest.skip("needs tf2_msgs and mvs_depth_ros/msg (tools/install_ros.sh builds them)")
    bag = _rgbd_bag(tmp_path, n=6)
    args = ["launch", "eval-bag", f"bag:={bag}", "dataset:=synthetic", f"output_dir:={tmp_path / 'eval'}",
            f"image:={RGBD_TOPICS['image']}", "camera_info:=/no/camera_info", f"gt_depth:={RGBD_TOPICS['depth_gt']}",
            "player.wait_for_topics:=[]", "mvs_node.end_timeout:=2.0", "evaluator.end_timeout:=2.0", *SMALL,
            "--duration", "120"]
    with NodeProcess("mvs_depth_ros.cli", args=args) as proc:
        rc = proc.proc.wait(140)
        log = proc.output()
    assert rc == 1, log[-3000:]
    assert "6 frames without their partner messages (0 dropped, 6 still waiting)" in log, log[-3000:]
    assert "evaluation INCOMPLETE" in log, log[-3000:]
