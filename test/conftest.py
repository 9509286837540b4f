import os
import signal

import pytest
import torch

from mvs_depth_ros.data.paths import shared_path

# Tests run on 2-core CI machines: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("MVS_TEST_THREADS", "2")))

# A job started in the background of a non-interactive shell (`cmd &`) inherits SIGINT and SIGQUIT *ignored*, and
# an ignored disposition survives exec: every node, `ros2 launch` and player the tests start would then ignore
# the SIGINT that stops it (as Ctrl-C does for a user), and the shutdown tests would fail for a reason that is
# not the package's. A handled signal is reset to its default on exec, so handling SIGINT here (Python's usual
# KeyboardInterrupt) gives every child process the disposition it has under a terminal or a CI runner.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def require_shared(*parts: str):
    """Path inside the shared data folder, or skip the test saying what is missing."""
    p = shared_path(*parts)
    if p is None:
        pytest.skip(f"shared data {'/'.join(parts)!r} not found (set MVS_DEPTH_SHARED or place ../shared beside the repo)")
    return p


@pytest.fixture(scope="session")
def colcon_ws(tmp_path_factory):
    """This package built with ``colcon build`` in a temporary workspace (the ROS 2 user's world); skips
    with the reason when the ROS 2 tools of ``../shared/ros2`` or colcon are not installed."""
    import colcon_world
    why = colcon_world.unavailable()
    if why:
        pytest.skip(why)
    ws = colcon_world.build_workspace(tmp_path_factory.mktemp("colcon_ws"))
    yield ws
    ws.run("ros2 daemon stop", check=False)  # started by `ros2 node list` / `ros2 param`
