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

    Invalid parameters (``ParameterError``) exit with status 2 and the reason; the node's counters are
    logged on the way out. ``large_messages`` tunes the allocator for multi-MB image/cloud messages.
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
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ParameterError as exc:
        print(f"{name}: invalid parameters: {exc}", file=sys.stderr)
        return 2
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
