"""The one ``main()`` shape shared by the package's node executables."""
from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Callable, List, Optional


def spin_node(factory: Callable[[], object], name: str, argv: Optional[List[str]] = None,
              large_messages: bool = True) -> int:
    """Init rclpy, build the node, spin it in a ``SingleThreadedExecutor`` until Ctrl-C / shutdown.

    Single-threaded on purpose: the nodes' callbacks only convert and hand over (inference, TF waits and
    fusion run on the nodes' own worker threads), and rclpy's ``MultiThreadedExecutor`` busy-loops its
    spinning thread over pending futures while holding the GIL, starving those workers (py-spy: ~50 % of
    GIL samples in ``Future.done``; the one-process HoloLens eval-bag evaluated 6 keyframes with it, 139
    with a single-threaded executor).

    Startup failures are one line on stderr and a non-zero exit, no traceback: invalid parameters
    (``ParameterError``) exit with status 2, anything else the node cannot start with (a corrupt or
    mismatched checkpoint, an unavailable device or tf backend) with status 1; ``MVS_DEPTH_ROS_DEBUG=1``
    adds the traceback. The node's counters are logged on the way out. ``large_messages`` tunes the
    allocator for multi-MB image/cloud messages.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from .params import ParameterError

    if large_messages:
        from .conversions import tune_allocator_for_large_messages
        tune_allocator_for_large_messages()
    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        try:
            node = factory()
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        except Exception as exc:  # noqa: BLE001 - every startup failure is one clear line
            return _startup_failure(name, exc, 2 if isinstance(exc, ParameterError) else 1)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            counters = getattr(node, "counters", None)
            if counters is not None:
                node.get_logger().info(f"counters: {asdict(counters)}")
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _startup_failure(name: str, exc: BaseException, code: int) -> int:
    """Print why the node cannot start as one line (the exception type only where the message alone is not
    self-explanatory) and return the exit status."""
    import os
    from .params import ParameterError

    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    known = isinstance(exc, (ParameterError, RuntimeError, ValueError, OSError))
    what = "invalid parameters" if isinstance(exc, ParameterError) else "cannot start"
    print(f"{name}: {what}: {text if known else f'{type(exc).__name__}: {text}'}", file=sys.stderr, flush=True)
    if os.environ.get("MVS_DEPTH_ROS_DEBUG"):
        import traceback
        traceback.print_exception(exc)
    return code
