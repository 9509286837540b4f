"""The one ``main()`` shape shared by the package's node executables."""
from __future__ import annotations

import os
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
    evaluator when the evaluation is complete) and the process exits with it. A node whose parent process
    ends (upstream ``ros2 launch`` cancels itself on SIGTERM without stopping its processes) shuts down the
    same way instead of running on as an orphan.

    Startup failures are one line on stderr and a non-zero exit, no traceback: invalid parameters
    (``ParameterError``) exit with status 2, anything else the node cannot start with (a corrupt or
    mismatched checkpoint, an unavailable device or tf backend, an unreadable bag) with status 1;
    ``MVS_DEPTH_ROS_DEBUG=1`` adds the traceback. Invalid parameters, a missing interface or an unusable
    input raised while spinning exit with status 2 and the reason in one line. ``large_messages`` tunes the
    allocator for multi-MB messages.
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
    parent = os.getppid()
    rclpy.init(args=sys.argv if argv is None else argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    rc = 0
    try:
        try:
            node = factory()
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        except Exception as exc:  # noqa: BLE001 - every startup failure is one clear line
            return _startup_failure(name, exc, 2 if isinstance(exc, ParameterError) else 1)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            code = getattr(node, "exit_code", None)
            if code is not None:
                rc = int(code)
                break
            if os.getppid() != parent:
                node.get_logger().warning(f"parent process {parent} has ended (e.g. `ros2 launch` stopped with "
                                          f"SIGTERM, which leaves its processes running): shutting down")
                break
    except (ParameterError, ValueError, ImportError, RuntimeError) as exc:
        print(f"{name}: {'invalid parameters: ' if isinstance(exc, ParameterError) else ''}{exc}", file=sys.stderr)
        rc = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if hasattr(node, "refresh_counters"):
                node.refresh_counters()
            counters = getattr(node, "counters", None)
            if counters is not None and rclpy.ok():
                node.get_logger().info(f"counters: { {f.name: getattr(counters, f.name) for f in fields(counters)} }")
            node.destroy_node()
        rclpy.try_shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
    return rc


def _startup_failure(name: str, exc: BaseException, code: int) -> int:
    """Print why the node cannot start as one line (the exception type only where the message alone is not
    self-explanatory) and return the exit status."""
    from .params import ParameterError

    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    known = isinstance(exc, (ParameterError, RuntimeError, ValueError, OSError))
    what = "invalid parameters" if isinstance(exc, ParameterError) else "cannot start"
    print(f"{name}: {what}: {text if known else f'{type(exc).__name__}: {text}'}", file=sys.stderr, flush=True)
    if os.environ.get("MVS_DEPTH_ROS_DEBUG"):
        import traceback
        traceback.print_exception(exc)
    return code
