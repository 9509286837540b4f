"""Video pipeline: keyframes drive the estimator, state is carried and reset on tracking loss."""
import numpy as np

from mvs_depth_ros.core.frame import DepthResult, Frame
from mvs_depth_ros.core.keyframes import KeyframeStatus
from mvs_depth_ros.core.pipeline import PipelineConfig, VideoPipeline
from mvs_depth_ros.models.base import DepthEstimator


class CountingEstimator(DepthEstimator):
    """Recurrent test double: state = number of keyframes seen since the last reset."""
    name = "counting"
    recurrent = True

    def __init__(self):
        super().__init__(device="cpu")
        self.calls = []

    def initial_state(self):
        return 0

    def estimate(self, reference, measurements, state=None):
        self.calls.append((reference, list(measurements), state))
        h, w = reference.image.shape[:2]
        return DepthResult(depth=np.full((h, w), 1.0, np.float32), confidence=np.ones((h, w), np.float32),
                           K=reference.K, state=state + 1)


def _frames(n, step=0.06, size=(40, 30)):
    rng = np.random.default_rng(0)
    K = np.array([[30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]])
    out = []
    for i in range(n):
        T = np.eye(4)
        T[0, 3] = step * i
        out.append(Frame(image=rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), K=K, T_world_cam=T,
                         name=f"{i:05d}", stamp=i))
    return out


def test_keyframes_drive_estimator_and_state_is_carried():
    est = CountingEstimator()
    pipe = VideoPipeline(est, PipelineConfig(width=20, height=16, n_measurement_frames=2))
    steps = [pipe.process(f) for f in _frames(10)]
    predicted = [s for s in steps if s.result is not None]
    assert [s.status for s in steps[:3]] == [KeyframeStatus.FIRST, KeyframeStatus.TOO_CLOSE, KeyframeStatus.KEYFRAME]
    assert len(predicted) == len(est.calls) == pipe.counters.predictions == 4  # frames 2, 4, 6, 8
    assert [c[2] for c in est.calls] == [0, 1, 2, 3]
    ref, meas, _ = est.calls[0]
    assert ref.image.shape == (16, 20, 3) and ref.K[0, 0] == 15.0 and len(meas) == 1
    assert all(len(c[1]) == 2 for c in est.calls[1:])
    # measurement frames are the buffered objects themselves: features cached by uid are reused
    buffered = {f.uid for f in pipe.buffer.keyframes}
    assert all(m.uid in buffered for m in est.calls[-1][1])


def test_tracking_loss_resets_state_and_buffer():
    est = CountingEstimator()
    pipe = VideoPipeline(est, PipelineConfig(width=20, height=16))
    frames = _frames(40)
    for f in frames[:6]:
        pipe.process(f)
    assert pipe.state == 2
    lost = [pipe.process(Frame(image=f.image, K=f.K, T_world_cam=None)) for f in frames[6:37]]
    assert lost[-1].status == KeyframeStatus.TRACKING_LOST and lost[-1].reset
    assert pipe.state == 0 and len(pipe.buffer) == 0 and pipe.counters.no_pose == 31
    s = [pipe.process(f) for f in frames[37:40]]
    assert s[0].status == KeyframeStatus.FIRST
    assert s[2].status == KeyframeStatus.KEYFRAME and s[2].result is not None
    assert est.calls[-1][2] == 0  # the first prediction after the reset starts from the initial state


def test_explicit_reset():
    est = CountingEstimator()
    pipe = VideoPipeline(est, PipelineConfig(width=20, height=16))
    for f in _frames(6):
        pipe.process(f)
    pipe.reset()
    assert pipe.state == 0 and len(pipe.buffer) == 0 and pipe.counters.resets == 1


def test_prepare_returns_the_same_object_for_the_same_frame():
    pipe = VideoPipeline(CountingEstimator(), PipelineConfig(width=20, height=16))
    f = _frames(1)[0]
    assert pipe.prepare(f) is pipe.prepare(f)
