"""`ros2 launch mvs_depth_ros eval_bag.launch.py` from a colcon workspace against offline `mvs-depth run --bag`.

    .venv/bin/python benchmarks/bench_eval_bag_launch.py [--frames 200] [--rate 1] [--runs 3] [--hogs 2]
        [--runner] [--workspace DIR]

The issue-11 acceptance run that is too long for the test suite: the HoloLens scene of the shared data converted
to a bag (``--frames`` first frames, all 200 by default), evaluated offline once, then ``--runs`` times through
``ros2 launch`` in a colcon workspace (built like the tests' ``colcon_ws`` fixture, or ``--workspace`` reused) —
and with ``--runner`` also through ``mvs-depth launch eval-bag`` — with ``--hogs`` CPU-burning processes running
beside it. Each run must exit 0 by itself with metrics.json equal to offline to 1e-6; printed: wall time per run,
exit status, keyframes and the largest metric difference.
"""
import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import colcon_world  # noqa: E402  (the tests' colcon workspace and sourced-shell helpers)
from ros_helpers import ros_env  # noqa: E402


def _burn(stop):
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i


def max_difference(ref: dict, got: dict) -> float:
    return max(abs(ref["summary"][k][m] - got["summary"][k][m]) for k in ("dense", "filtered") for m in ref["summary"][k])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hogs", type=int, default=2, help="CPU-burning processes beside each run")
    p.add_argument("--runner", action="store_true", help="also `mvs-depth launch eval-bag` (one process)")
    p.add_argument("--workspace", help="reuse this colcon workspace (built there when it has no install/)")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    why = colcon_world.unavailable()
    if why:
        print(f"cannot run: {why}")
        return 2
    from mvs_depth_ros.cli import main as cli_main
    from mvs_depth_ros.data.paths import shared_path
    scene = shared_path("data", "hololens-000")
    if scene is None:
        print("cannot run: no ../shared/data/hololens-000")
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench_eval_bag_"))
    bag = root / "hololens"
    assert cli_main(["bag", "convert", "--scene", str(scene), "--frames", str(args.frames), "--out", str(bag)]) == 0
    t0 = time.monotonic()
    assert cli_main(["run", "--bag", str(bag), "--device", "cpu", "--pictures", "0", "--out", str(root / "offline")]) == 0
    print(f"offline: {time.monotonic() - t0:.1f} s")
    ref = json.loads((root / "offline" / "metrics.json").read_text())
    ws_dir = Path(args.workspace) if args.workspace else root / "ws"
    if (ws_dir / "install" / "setup.bash").is_file():
        ws = colcon_world.ColconWorkspace(root=ws_dir, log="")
    else:
        ws_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        ws = colcon_world.build_workspace(ws_dir)
        print(f"colcon build: {time.monotonic() - t0:.1f} s")
    ev = f"bag:={bag} dataset:=hololens rate:={args.rate}"
    ways = [("ros2 launch", lambda out: ws.shell(f"ros2 launch mvs_depth_ros eval_bag.launch.py {ev} output_dir:={out}"),
             colcon_world.user_env())]
    if args.runner:
        ways.append(("mvs-depth launch", lambda out: [sys.executable, "-m", "mvs_depth_ros.cli", "launch", "eval-bag",
                                                      *ev.split(), f"output_dir:={out}"], ros_env()))
    failures = 0
    for name, cmd, env in ways:
        for i in range(args.runs):
            out = root / f"{name.split()[0]}_{i}"
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.hogs)]
            for h in hogs:
                h.start()
            t0 = time.monotonic()
            with open(root / f"{out.name}.log", "wb") as log:
                proc = subprocess.Popen(cmd(out), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root),
                                        start_new_session=True)
                try:
                    rc = proc.wait(args.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    rc = "timeout"
            wall = time.monotonic() - t0
            stop.set()
            for h in hogs:
                h.join()
            try:
                got = json.loads((out / "metrics.json").read_text())
                diff = max_difference(ref, got)
                kf = got["summary"]["keyframes"]
            except (OSError, KeyError, ValueError) as exc:
                diff, kf = float("nan"), f"none ({type(exc).__name__})"
            ok = rc == 0 and diff <= 1e-6 and kf == ref["summary"]["keyframes"]
            failures += not ok
            print(f"{name} run {i + 1}: exit {rc}, {wall:.1f} s, keyframes {kf}/{ref['summary']['keyframes']}, "
                  f"max |metric - offline| {diff:.2e} -> {'OK' if ok else 'FAIL'} (log {root / (out.name + '.log')})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
