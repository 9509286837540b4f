"""The one ``main()`` shape shared by the package's node executables."""
from __future__ import annotations

import signal
import sys
import threading
from dataclasses import fields
from typing import Callable, List, Optional


def spin_node(factory: Callable[[], object], name: str, argv: Optional[List[str]] = None,
              large_messages: bool = True) -> int:
    """Init rclpy, build the node, spin it in a ``SingleThreadedExecutor`` until SIGINT / SIGTERM / the node
    is done; returns the exit status.

    Single-threaded on purpose: the nodes' callbacks only convert and hand over (inference, TF waits and
    fusion run on the nodes' own worker threads), and rclpy's ``MultiThreadedExecutor`` busy-loops its
    spinning thread over pending futures while holding the GIL, starving those workers (py-spy: ~50 % of
    GIL samples in ``Future.done``; the one-process HoloLens eval-bag evaluated 6 keyframes with it, 139
    with a single-threaded executor).

    Shutdown: SIGINT (Ctrl-C, ``ros2 launch``) and SIGTERM only set a flag; the loop then stops, the node
    logs its counters and is destroyed while the context is still valid (no traceback, no "Failed to publish
    log message to rosout: publisher's context is invalid"), and rclpy shuts down last. A node with an
    ``exit_code`` attribute ends the process by itself once that is not None (player at the end of the bag,
    evaluator when the evaluation is complete) and the process exits with it.

    Invalid parameters (``ParameterError``, ``ValueError``), a missing interface (``ImportError``) or an unusable
    input (``RuntimeError``: an unreadable bag) exit with status 2 and the reason in one line. ``large_messages`` tunes the allocator for multi-MB messages.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from .params import ParameterError

    if large_messages:
        from .conversions import tune_allocator_for_large_messages
        tune_allocator_for_large_messages()
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=sys.argv if argv is None else argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    rc = 0
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            code = getattr(node, "exit_code", None)
            if code is not None:
                rc = int(code)
                break
    except (ParameterError, ValueError, ImportError, RuntimeError) as exc:
        print(f"{name}: {'invalid parameters: ' if isinstance(exc, ParameterError) else ''}{exc}", file=sys.stderr)
        rc = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            counters = getattr(node, "counters", None)
            if counters is not None and rclpy.ok():
                node.get_logger().info(f"counters: { {f.name: getattr(counters, f.name) for f in fields(counters)} }")
            node.destroy_node()
        rclpy.try_shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
    return rc
