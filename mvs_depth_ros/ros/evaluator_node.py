"""``evaluator_node``: online depth metrics of predicted depth against ground-truth depth.

Subscribes the predictions (``prediction_type`` ``estimate``: ``mvs_depth_ros/msg/DepthEstimate``
with depth, confidence and measurement stamps; or ``image``: a ``32FC1`` depth image plus an optional
``32FC1`` confidence image) and the ground truth (``32FC1`` metres or ``16UC1`` mm), pairs them by
stamp (exactly, or within ``match_tolerance`` seconds), and computes the metrics with the very
functions of the offline ``mvs-depth run`` (:func:`mvs_depth_ros.eval.metrics.depth_metrics` /
``aggregate``, confidence filtering by :meth:`DepthResult.filtered`), so both agree to the last bit.
The ground truth is brought to the prediction's resolution by nearest neighbour, as
:meth:`Frame.resized` does offline.

Writes the ``mvs-depth run`` output contract to ``output_dir`` on shutdown (also every
``write_period`` seconds, and whenever :meth:`EvaluatorNode.write` is called): ``depth/<stem>.npy``,
``confidence/<stem>.npy``, ``metrics.json`` (summary with ``dense``/``filtered`` aggregates + per-frame
rows), ``keyframes.txt``. Stems come from the bag's frame list (``names_bag``, a bag written by
``mvs-depth bag convert``) or are the stamps in nanoseconds.

Bad input never stops it: undecodable messages, predictions without ground truth, ground truth that
a later prediction proved unmatched, stamps going backwards and duplicates are counted
(:attr:`EvaluatorCore.counters`) and logged rate-limited.

In-process use (the ``mvs-depth launch`` runner)::

    node = EvaluatorNode(output_dir="out/eval", names_bag="/path/bag")   # keyword = parameter override
    ...; node.write()  # or destroy_node(), which writes too

:class:`EvaluatorCore` is the ROS-free part (matching, metrics, files), usable without rclpy.
"""
from __future__ import annotations

import bisect
import logging
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..core.frame import DepthResult
from ..models.base import DEFAULT_CONFIDENCE_THRESHOLD
from ..eval import metrics as M

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- ROS-free core
@dataclass(frozen=True)
class EvaluatorConfig:
    min_gt: float = 0.5
    min_depth: float = 0.25
    max_depth: float = 20.0
    #: threshold of the "filtered" numbers; < 0: the estimator's recommendation carried by each prediction
    #: (DepthEstimate.confidence_threshold), exactly what `mvs-depth run` uses by default
    confidence_threshold: float = -1.0
    match_tolerance_ns: int = 0
    max_pending: int = 1000
    output_dir: str = ""

    def __post_init__(self) -> None:
        if not (0 < self.min_depth < self.max_depth):
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if not self.min_gt >= 0:
            raise ValueError(f"min_gt must be >= 0, got {self.min_gt}")
        if not self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be <= 1 (< 0: the estimator's own), got {self.confidence_threshold}")
        if self.match_tolerance_ns < 0 or self.max_pending < 1:
            raise ValueError("match_tolerance must be >= 0 and max_pending >= 1")


@dataclass
class EvaluatorCounters:
    predictions: int = 0
    ground_truth: int = 0
    evaluated: int = 0
    no_valid_gt: int = 0                # matched, but the GT has no pixel in range
    prediction_without_gt: int = 0
    gt_without_prediction: int = 0      # GT older than an evaluated prediction, never matched
    stamps_backwards: int = 0
    duplicates: int = 0
    bad_messages: int = 0
    evicted: int = 0                    # unmatched messages dropped because more than max_pending waited


@dataclass
class _Pred:
    stamp: int
    depth: np.ndarray
    confidence: Optional[np.ndarray]
    measurement_stamps: List[int] = field(default_factory=list)
    ms: Optional[float] = None
    threshold: Optional[float] = None   # the estimator's recommended confidence threshold


def gt_at_resolution(gt: np.ndarray, width: int, height: int) -> np.ndarray:
    """Ground truth resized by nearest neighbour, exactly as :meth:`Frame.resized` does offline."""
    if gt.shape == (height, width):
        return gt
    return cv2.resize(gt, (width, height), interpolation=cv2.INTER_NEAREST)


class EvaluatorCore:
    """Pairs predictions and ground truth by stamp, computes the offline metrics, writes the contract.

    Thread-safe. ``warn(key, text)`` receives problems (the node rate-limits them per key).
    """

    def __init__(self, config: EvaluatorConfig = EvaluatorConfig(), names: Optional[Dict[int, str]] = None,
                 warn: Optional[Callable[[str, str], None]] = None):
        self.config = config
        self.names = dict(names or {})
        self.counters = EvaluatorCounters()
        self.per_frame: List[dict] = []
        self._dense: List[Optional[dict]] = []
        self._filtered: List[Optional[dict]] = []
        self._outputs: List[Tuple[str, np.ndarray, Optional[np.ndarray], List[str]]] = []
        self._preds: Dict[int, _Pred] = {}
        self._gts: Dict[int, np.ndarray] = {}
        self._gt_stamps: List[int] = []
        self._done: set = set()
        self._last_pred = -1
        self._last_gt = -1
        self._lock = threading.RLock()
        self._warn = warn or (lambda key, text: log.warning(text))
        self._written = 0
        self.threshold_used: Optional[float] = None  # the filtered numbers' threshold (last prediction)

    def name_of(self, stamp: int) -> str:
        return self.names.get(stamp, str(stamp))

    # ----------------------------------------------------------------------------------- inputs
    def add_prediction(self, stamp: int, depth: np.ndarray, confidence: Optional[np.ndarray] = None,
                       measurement_stamps: Sequence[int] = (), ms: Optional[float] = None,
                       threshold: Optional[float] = None) -> None:
        with self._lock:
            c = self.counters
            c.predictions += 1
            if confidence is not None and confidence.shape != depth.shape:
                c.bad_messages += 1
                self._warn("shape", f"confidence {confidence.shape} does not match depth {depth.shape} at {stamp}; "
                                    "evaluating without it")
                confidence = None
            if stamp in self._done or stamp in self._preds:
                c.duplicates += 1
                self._warn("duplicate", f"second prediction for stamp {stamp} ignored")
                return
            if stamp < self._last_pred:
                c.stamps_backwards += 1
                self._warn("backwards", f"prediction stamp went backwards ({stamp} < {self._last_pred})")
            self._last_pred = max(self._last_pred, stamp)
            self._preds[stamp] = _Pred(stamp, depth, confidence, list(measurement_stamps), ms, threshold)
            self._match()

    def add_ground_truth(self, stamp: int, depth: np.ndarray) -> None:
        with self._lock:
            c = self.counters
            c.ground_truth += 1
            if stamp < self._last_gt:
                c.stamps_backwards += 1
                self._warn("backwards", f"ground-truth stamp went backwards ({stamp} < {self._last_gt})")
            self._last_gt = max(self._last_gt, stamp)
            if stamp not in self._gts:
                bisect.insort(self._gt_stamps, stamp)
            self._gts[stamp] = depth
            self._match()

    def bad_message(self, what: str) -> None:
        with self._lock:
            self.counters.bad_messages += 1
        self._warn("bad", what)

    # ---------------------------------------------------------------------------------- matching
    def _find_gt(self, stamp: int) -> Optional[int]:
        tol = self.config.match_tolerance_ns
        k = bisect.bisect_left(self._gt_stamps, stamp - tol)
        best = None
        while k < len(self._gt_stamps) and self._gt_stamps[k] <= stamp + tol:
            s = self._gt_stamps[k]
            if best is None or abs(s - stamp) < abs(best - stamp):
                best = s
            k += 1
        return best

    def _drop_gt(self, stamp: int) -> None:
        del self._gts[stamp]
        self._gt_stamps.remove(stamp)

    def _match(self) -> None:
        tol = self.config.match_tolerance_ns
        for stamp in sorted(self._preds):
            g = self._find_gt(stamp)
            if g is not None:
                pred = self._preds.pop(stamp)
                gt = self._gts[g]
                self._drop_gt(g)
                # GT older than this prediction that nothing matched: keyframe-less frames (normal for a
                # video pipeline) or lost predictions; counted, not an error
                for s in [s for s in self._gt_stamps if s < stamp - tol]:
                    if not any(abs(p - s) <= tol for p in self._preds):
                        self._drop_gt(s)
                        self.counters.gt_without_prediction += 1
                        self._warn("gt_unmatched", f"ground truth at {s} has no prediction (a non-keyframe or a "
                                                   "dropped frame); counted as gt_without_prediction")
                self._evaluate(pred, gt)
            elif self._gt_stamps and self._gt_stamps[-1] > stamp + tol:
                # ground truth has moved past this prediction: its GT will not come
                self._preds.pop(stamp)
                self._done.add(stamp)
                self.counters.prediction_without_gt += 1
                self._warn("no_gt", f"no ground truth for the prediction at {stamp} (tolerance {tol} ns)")
        # more unmatched messages than max_pending: the oldest is lost for lack of room (a run that loses
        # any is incomplete, see EvaluatorNode._check_end)
        while len(self._preds) > self.config.max_pending:
            s = min(self._preds)
            self._preds.pop(s)
            self.counters.evicted += 1
            self._warn("evicted", f"prediction at {s} waited for ground truth behind {self.config.max_pending} "
                                  f"others; dropped (raise max_pending)")
        while len(self._gt_stamps) > self.config.max_pending:
            s = self._gt_stamps[0]
            self._drop_gt(s)
            self.counters.evicted += 1
            self._warn("evicted", f"ground truth at {s} waited for its prediction behind {self.config.max_pending} "
                                  f"others; dropped (raise max_pending)")

    def threshold_for(self, pred: _Pred) -> float:
        if self.config.confidence_threshold >= 0:
            return self.config.confidence_threshold
        return pred.threshold if pred.threshold is not None else DEFAULT_CONFIDENCE_THRESHOLD

    def _evaluate(self, pred: _Pred, gt: np.ndarray) -> None:
        cfg = self.config
        self._done.add(pred.stamp)
        h, w = pred.depth.shape
        gt_r = gt_at_resolution(gt, w, h)
        clip = (cfg.min_depth, cfg.max_depth)
        dense = M.depth_metrics(pred.depth, gt_r, min_gt=cfg.min_gt, clip=clip)
        filt = None
        if pred.confidence is not None:
            self.threshold_used = self.threshold_for(pred)
            filtered = DepthResult(depth=pred.depth, confidence=pred.confidence, K=np.eye(3)).filtered(
                self.threshold_used)
            filt = M.depth_metrics(filtered, gt_r, min_gt=cfg.min_gt, clip=clip)
        stem = Path(self.name_of(pred.stamp)).stem
        meas = [Path(self.name_of(s)).stem for s in pred.measurement_stamps]
        row = {"name": stem, "stamp": pred.stamp, "measurements": meas, "ms": pred.ms, "dense": dense}
        if pred.confidence is not None:
            row["filtered"] = filt
        self.per_frame.append(row)
        self._outputs.append((stem, pred.depth, pred.confidence, meas))
        if dense is None:
            self.counters.no_valid_gt += 1
        self._dense.append(dense)
        if pred.confidence is not None:
            self._filtered.append(filt)
        self.counters.evaluated += 1

    # ----------------------------------------------------------------------------------- results
    def summary(self) -> dict:
        with self._lock:
            cfg = self.config
            out = {
                "source": "evaluator_node",
                "settings": {"min_depth": cfg.min_depth, "max_depth": cfg.max_depth, "min_gt": cfg.min_gt,
                             "confidence_threshold": (cfg.confidence_threshold if cfg.confidence_threshold >= 0
                                                      else self.threshold_used),
                             "match_tolerance_ns": cfg.match_tolerance_ns},
                "keyframes": len(self.per_frame),
                "evaluator": asdict(self.counters),
            }
            if any(r is not None for r in self._dense):
                out["dense"] = M.aggregate(self._dense)
            if any(r is not None for r in self._filtered):
                out["filtered"] = M.aggregate(self._filtered)
            return out

    def finish(self) -> None:
        """End of input: predictions still waiting for ground truth are counted as unmatched."""
        with self._lock:
            for s in sorted(self._preds):
                self.counters.prediction_without_gt += 1
                self._warn("no_gt", f"no ground truth for the prediction at {s} by the end")
            self._preds.clear()

    def write(self, out_dir: Optional[str] = None) -> Optional[Path]:
        """Write the ``mvs-depth run`` contract to ``out_dir`` (default ``config.output_dir``)."""
        out_s = out_dir if out_dir is not None else self.config.output_dir
        if not out_s:
            return None
        out = Path(out_s)
        with self._lock:
            (out / "depth").mkdir(parents=True, exist_ok=True)
            (out / "confidence").mkdir(parents=True, exist_ok=True)
            for stem, depth, conf, _ in self._outputs[self._written:]:
                np.save(out / "depth" / f"{stem}.npy", depth.astype(np.float32, copy=False))
                if conf is not None:
                    np.save(out / "confidence" / f"{stem}.npy", conf.astype(np.float32, copy=False))
            self._written = len(self._outputs)
            (out / "keyframes.txt").write_text(
                "".join(" ".join(f"{n}.png" for n in [stem, *meas]) + "\n" for stem, _, _, meas in self._outputs))
            M.write_metrics_json(out / "metrics.json", self.summary(), self.per_frame)
        return out


# ------------------------------------------------------------------------------------------ the node
try:
    import rclpy
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from .conversions import image_to_depth
    from .qos import make_qos
    _RCLPY_ERROR: Optional[str] = None
except ImportError as _exc:  # pragma: no cover - depends on the install
    Node = object  # type: ignore[assignment,misc]
    _RCLPY_ERROR = str(_exc)


def _frange(lo: float, hi: float):
    return {"floating_point_range": [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]}


def _params() -> Dict[str, Tuple[object, str, dict]]:
    return {
        "prediction_type": ("estimate", "'estimate' (mvs_depth_ros/msg/DepthEstimate) or 'image' (32FC1 depth)", {}),
        "prediction_topic": ("/mvs/depth_estimate", "predicted depth topic", {}),
        "confidence_topic": ("", "32FC1 confidence topic for prediction_type 'image' ('' = none)", {}),
        "gt_topic": ("/camera/depth_gt", "ground-truth depth topic (32FC1 metres or 16UC1 mm)", {}),
        "match_tolerance": (0.0, "largest stamp difference (s) between a prediction and its ground truth",
                            _frange(0.0, 10.0)),
        "min_gt": (0.5, "ground truth below this is not evaluated (m)", _frange(0.0, 1000.0)),
        "min_depth": (0.25, "prediction clipped to [min_depth, max_depth] before the metrics (m)",
                      _frange(1e-6, 1e4)),
        "max_depth": (20.0, "see min_depth (m)", _frange(1e-6, 1e4)),
        "confidence_threshold": (-1.0, "confidence threshold of the 'filtered' numbers (< 0: the estimator's "
                                 "recommendation from each DepthEstimate, as `mvs-depth run` does)", _frange(-1.0, 1.0)),
        "output_dir": ("", "write the mvs-depth run output contract here ('' = do not write)", {}),
        "names_bag": ("", "bag converted by 'mvs-depth bag convert' whose frame names label the results", {}),
        "write_period": (0.0, "also write the outputs every this many seconds (0 = only at shutdown)",
                         _frange(0.0, 86400.0)),
        "log_every": (10, "log the running means every N evaluated frames (0 = never)",
                      {"integer_range": [IntegerRange(from_value=0, to_value=100000, step=1)]}),
        "max_pending": (1000, "unmatched messages kept per input (more: the oldest is dropped and the run is incomplete)",
                        {"integer_range": [IntegerRange(from_value=1, to_value=100000, step=1)]}),
        "qos_reliability": ("reliable", "subscription reliability: 'reliable' (evaluate every frame) or "
                            "'best_effort'", {}),
        "qos_depth": (20, "subscription history depth",
                      {"integer_range": [IntegerRange(from_value=1, to_value=10000, step=1)]}),
        "end_of_stream_topic": ("", "the depth node's end_of_stream report (diagnostic_msgs/DiagnosticStatus): once "
                                "it and every prediction it counts have arrived, the evaluator writes its outputs and "
                                "the process exits, 0 when every frame was processed, 1 when frames were lost or "
                                "dropped for lack of time ('' = run until shut down)", {}),
        "end_of_bag_topic": ("", "the player's end-of-bag report (messages sent per topic): the ground truth to wait "
                             "for before finishing ('' = none)", {}),
        "end_timeout": (30.0, "seconds without new input after the reports before missing messages count as lost",
                        _frange(0.1, 3600.0)),
        "sync_backend": ("auto", "prediction_type 'image' with a confidence topic: pair depth and confidence with "
                         "message_filters (auto, when importable) or the package's own matcher (builtin)", {}),
    }


class EvaluatorNode(Node):  # type: ignore[misc,valid-type]
    """Online evaluator; keyword arguments are parameter overrides (see the module docstring)."""

    def __init__(self, node_name: str = "evaluator", *, namespace: Optional[str] = None, context=None,
                 parameter_overrides=None, cli_args=None, **params):
        if _RCLPY_ERROR is not None:
            raise ImportError(f"evaluator_node needs rclpy: {_RCLPY_ERROR}")
        spec = _params()
        overrides = list(parameter_overrides or [])
        for k, v in params.items():
            if k not in spec:
                raise TypeError(f"unknown parameter {k!r}; known: {', '.join(spec)}")
            overrides.append(Parameter(k, value=v))
        super().__init__(node_name, namespace=namespace, context=context, cli_args=cli_args,
                         parameter_overrides=overrides)
        for name, (default, desc, extra) in spec.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=desc, read_only=True, **extra))
        gp = lambda n: self.get_parameter(n).value  # noqa: E731
        kind = str(gp("prediction_type"))
        if kind not in ("estimate", "image"):
            raise ValueError(f"parameter 'prediction_type' must be 'estimate' or 'image', got {kind!r}")
        self.config = EvaluatorConfig(
            min_gt=float(gp("min_gt")), min_depth=float(gp("min_depth")), max_depth=float(gp("max_depth")),
            confidence_threshold=float(gp("confidence_threshold")),
            match_tolerance_ns=int(round(float(gp("match_tolerance")) * 1e9)), max_pending=int(gp("max_pending")),
            output_dir=str(gp("output_dir")))
        names: Dict[int, str] = {}
        if gp("names_bag"):
            from ..data.bags import frame_names
            names = frame_names(str(gp("names_bag")))
            if not names:
                self.get_logger().warning(f"{gp('names_bag')}: no frame list in the bag; results named by stamp")
        self._last_warn: Dict[str, float] = {}
        self.core = EvaluatorCore(self.config, names, warn=self._warn)
        self._finished = False
        self._log_every = int(gp("log_every"))
        self._logged_at = 0
        self._written = False

        qos = make_qos(str(gp("qos_reliability")), int(gp("qos_depth")))
        if kind == "estimate":
            from .interfaces import depth_estimate_type
            msg_t = depth_estimate_type()
            if msg_t is None:
                raise ImportError("prediction_type 'estimate' needs mvs_depth_ros/msg/DepthEstimate, which this install "
                                  "lacks (run tools/install_ros.sh, or use prediction_type 'image')")
            self.create_subscription(msg_t, gp("prediction_topic"), self._on_estimate, qos)
        elif gp("confidence_topic"):
            from .sync import TopicSync
            self._pairs = TopicSync(self, [(Image, gp("prediction_topic")), (Image, gp("confidence_topic"))], qos,
                                    self._on_depth_and_confidence, queue_size=int(gp("max_pending")),
                                    backend=str(gp("sync_backend")))
        else:
            self.create_subscription(Image, gp("prediction_topic"), self._on_depth, qos)
        gt_sub = self.create_subscription(Image, gp("gt_topic"), self._on_gt, qos)
        self._gt_topic = gt_sub.topic_name
        self.exit_code: Optional[int] = None   # set when the evaluation is complete (spin_node exits with it)
        self._node_report = None
        self._bag_report: Optional[Dict[str, int]] = None
        self._last_input = time.monotonic()
        if gp("end_of_stream_topic") or gp("end_of_bag_topic"):
            from diagnostic_msgs.msg import DiagnosticStatus
            from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            if gp("end_of_stream_topic"):
                self.create_subscription(DiagnosticStatus, gp("end_of_stream_topic"), self._on_node_report, latched)
            if gp("end_of_bag_topic"):
                self.create_subscription(DiagnosticStatus, gp("end_of_bag_topic"), self._on_bag_report, latched)
            self._end_timeout = float(gp("end_timeout"))
            self._wait_for_node = bool(gp("end_of_stream_topic"))
            from .node_base import steady_clock   # wall time: /clock stops with the bag
            self.create_timer(0.2, self._check_end, clock=steady_clock())
        if float(gp("write_period")) > 0 and self.config.output_dir:
            self.create_timer(float(gp("write_period")), self.write)
        self.get_logger().info(
            f"evaluating {gp('prediction_topic')} ({kind}) against {gp('gt_topic')}, tolerance "
            f"{self.config.match_tolerance_ns / 1e9:g} s" + (f", writing {self.config.output_dir}"
                                                            if self.config.output_dir else ""))

    # ------------------------------------------------------------------------------------ helpers
    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -math.inf) >= 5.0:
            self._last_warn[key] = now
            self.get_logger().warning(f"{text} (counters: {asdict(self.core.counters)})")

    @staticmethod
    def _stamp(header) -> int:
        return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)

    def _after_add(self) -> None:
        n = self.core.counters.evaluated
        if self._log_every and n >= self._logged_at + self._log_every:
            self._logged_at = n
            s = self.core.summary()
            d = s.get("dense") or {}
            self.get_logger().info(f"{n} frames: abs_rel {d.get('abs_rel', float('nan')):.4f} "
                                   f"a1 {d.get('a1', float('nan')):.4f} rmse {d.get('rmse', float('nan')):.4f}")

    # ---------------------------------------------------------------------------------- callbacks
    def _on_estimate(self, msg) -> None:
        self._last_input = time.monotonic()
        stamp = self._stamp(msg.header)
        try:
            depth = image_to_depth(msg.depth)
            conf = image_to_depth(msg.confidence) if msg.confidence.width else None
        except ValueError as exc:
            self.core.bad_message(f"undecodable DepthEstimate at {stamp}: {exc}")
            return
        meas = [int(t.sec) * 10**9 + int(t.nanosec) for t in msg.measurement_stamps]
        self.core.add_prediction(stamp, depth, conf, meas, float(msg.compute_ms),
                                 float(msg.confidence_threshold) if hasattr(msg, "confidence_threshold") else None)
        self._after_add()

    def _on_depth(self, msg) -> None:
        self._last_input = time.monotonic()
        stamp = self._stamp(msg.header)
        try:
            depth = image_to_depth(msg)
        except ValueError as exc:
            self.core.bad_message(f"undecodable predicted depth at {stamp}: {exc}")
            return
        self.core.add_prediction(stamp, depth)
        self._after_add()

    def _on_depth_and_confidence(self, depth_msg, conf_msg) -> None:
        self._last_input = time.monotonic()
        stamp = self._stamp(depth_msg.header)
        try:
            depth, conf = image_to_depth(depth_msg), image_to_depth(conf_msg)
        except ValueError as exc:
            self.core.bad_message(f"undecodable predicted depth / confidence at {stamp}: {exc}")
            return
        self.core.add_prediction(stamp, depth, conf)
        self._after_add()

    def _on_gt(self, msg) -> None:
        self._last_input = time.monotonic()
        stamp = self._stamp(msg.header)
        try:
            gt = image_to_depth(msg)
        except ValueError as exc:
            self.core.bad_message(f"undecodable ground truth at {stamp}: {exc}")
            return
        self.core.add_ground_truth(stamp, gt)

    # ------------------------------------------------------------------------------------ end of run
    def _on_node_report(self, msg) -> None:
        self._last_input = time.monotonic()
        self._node_report = msg
        self.get_logger().info(f"depth node finished: {msg.message}")

    def _on_bag_report(self, msg) -> None:
        self._last_input = time.monotonic()
        self._bag_report = {kv.key: int(kv.value) for kv in msg.values if kv.value.isdigit()}

    def _check_end(self) -> None:
        """Finish once the depth node's report (and the player's) are in and every message they count has
        arrived -- or after ``end_timeout`` seconds without input, counting what is missing."""
        if self.exit_code is not None or (self._wait_for_node and self._node_report is None) or \
                (not self._wait_for_node and self._bag_report is None):
            return
        c = self.core.counters
        report = {kv.key: kv.value for kv in self._node_report.values} if self._node_report is not None else {}
        want_pred = int(report.get("predictions", 0))
        want_gt = (self._bag_report or {}).get(self._gt_topic, 0)
        complete = c.predictions >= want_pred and c.ground_truth >= want_gt
        if not complete and time.monotonic() - self._last_input < self._end_timeout:
            return
        problems = []
        if self._node_report is not None and self._node_report.level != b"\x00":
            problems.append(f"depth node: {self._node_report.message}")
        if c.predictions < want_pred:
            problems.append(f"{want_pred - c.predictions} of {want_pred} predictions never arrived")
        if c.ground_truth < want_gt:
            problems.append(f"{want_gt - c.ground_truth} of {want_gt} ground-truth images never arrived")
        if c.evicted:
            problems.append(f"{c.evicted} unmatched messages dropped for lack of room (max_pending "
                            f"{self.core.config.max_pending})")
        if c.prediction_without_gt:
            problems.append(f"{c.prediction_without_gt} predictions without ground truth (gt_stamp_tolerance?)")
        self.finish()
        if problems:
            self.get_logger().error("evaluation INCOMPLETE: " + "; ".join(problems))
        else:
            self.get_logger().info(f"evaluation complete: {c.evaluated} keyframes evaluated, every frame processed")
        self.exit_code = 1 if problems else 0

    # ------------------------------------------------------------------------------------ results
    def write(self) -> Optional[Path]:
        out = self.core.write()
        if out is not None:
            self._written = True
        return out

    def finish(self) -> Optional[Path]:
        """End of input: count the unmatched, log the totals, write the outputs."""
        self._finished = True
        self.core.finish()
        s = self.core.summary()
        d = s.get("dense") or {}
        self.get_logger().info(
            f"evaluated {s['keyframes']} frames: abs_rel {d.get('abs_rel', float('nan')):.4f} "
            f"a1 {d.get('a1', float('nan')):.4f}; counters {s['evaluator']}")
        out = self.write()
        if out is not None:
            self.get_logger().info(f"wrote {out}/metrics.json")
        return out

    def destroy_node(self):
        try:
            if not self._finished:
                self.finish()
        except Exception as exc:  # noqa: BLE001 - shutting down; say why the files are missing
            self.get_logger().error(f"could not write the evaluation outputs: {exc}")
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run mvs_depth_ros evaluator_node``: until SIGINT / SIGTERM, or the end of an evaluated bag."""
    if _RCLPY_ERROR is not None:
        print(f"evaluator_node: rclpy is not available ({_RCLPY_ERROR})", file=sys.stderr)
        return 2
    from .node_main import spin_node
    return spin_node(EvaluatorNode, "evaluator_node", args, large_messages=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
