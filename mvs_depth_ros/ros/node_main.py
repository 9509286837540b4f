"""The one ``main()`` shape shared by the package's node executables."""
from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Callable, List, Optional


def spin_node(factory: Callable[[], object], name: str, argv: Optional[List[str]] = None, threads: int = 2,
              large_messages: bool = True) -> int:
    """Init rclpy, build the node, spin it in a ``MultiThreadedExecutor`` until Ctrl-C / shutdown.

    Invalid parameters (``ParameterError``) exit with status 2 and the reason; the node's counters are
    logged on the way out. ``large_messages`` tunes the allocator for multi-MB image/cloud messages.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from .params import ParameterError

    if large_messages:
        from .conversions import tune_allocator_for_large_messages
        tune_allocator_for_large_messages()
    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        node = factory()
        executor = MultiThreadedExecutor(num_threads=threads)
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
