"""``mvs-depth launch PROFILE [key:=value ...]``: the launch files' nodes in one process.

For installs without ``ros2 launch`` (the PyPI ROS 2 wheels). Each profile starts the same nodes, with the
same parameter YAML files, remappings and namespaces as its launch file, in one ``SingleThreadedExecutor``:

* ``fusion``  (launch/fusion.launch.py): ``mvs_node`` [+ ``map_node`` with ``map:=true``];
* ``pair``    (launch/pair.launch.py): ``fusion`` with the DeepVideoMVS pair network as default model;
* ``stereo``  (launch/stereo.launch.py): ``stereo_node`` [+ ``player_node`` with ``bag:=``];
* ``eval-bag`` (launch/eval_bag.launch.py): ``player_node`` + ``mvs_node`` + ``evaluator_node``; stops by
  itself when the bag has been played and the depth node has finished its last frame.

Arguments are the launch file's (``key:=value`` or ``--key value``; ``mvs-depth launch fusion --help``
lists them, read from the launch file itself); ``NODE.param:=value`` sets any parameter of one node;
``--duration S`` stops after S seconds. The project's Fast DDS profile is used unless
``FASTDDS_DEFAULT_PROFILES_FILE`` is set.
"""
from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

log = logging.getLogger("mvs_depth_ros.launch")
PKG = "mvs_depth_ros"


class LaunchError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------

def share_dir() -> Path:
    """Folder holding launch/ and config/: the source checkout, else the installed share/mvs_depth_ros."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "config" / "mvs.yaml").is_file() and (repo / "launch").is_dir():
        return repo
    for prefix in [sys.prefix] + os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        p = Path(prefix) / "share" / PKG
        if (p / "config").is_dir():
            return p
    raise LaunchError(f"cannot find the {PKG} config/ and launch/ folders (source checkout or share/{PKG})")


def launch_arguments(launch_file: Path) -> Dict[str, Tuple[str, str]]:
    """The ``ARGUMENTS`` table (name -> (default, description)) of a launch file, read without importing
    ``launch``; for files without one, their ``DeclareLaunchArgument(...)`` calls."""
    tree = ast.parse(launch_file.read_text(), str(launch_file))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            return {k: tuple(v) for k, v in ast.literal_eval(node.value).items()}
    out: Dict[str, Tuple[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" and node.args:
            try:
                name = ast.literal_eval(node.args[0])
            except ValueError:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            default = kw.get("default_value")
            desc = kw.get("description")
            out[name] = (ast.literal_eval(default) if default is not None else None,
                         ast.literal_eval(desc) if desc is not None else "")
    return out


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _node_key_matches(key: str, fqn: str) -> bool:
    """Whether a parameter file's node key selects the node ``fqn`` (``/ns/name``), as rcl decides: a key
    without a leading ``/`` is absolute, ``*`` stands for one name token (or part of one), ``**`` for any
    number of tokens (``/**`` = every node, ``/**/mvs_node`` = ``mvs_node`` in any namespace)."""
    tokens = [t for t in ("/" + key.lstrip("/")).split("/")[1:]]
    pattern = ""
    for t in tokens:
        pattern += "(/[^/]+)*" if t == "**" else "/" + "[^/]*".join(re.escape(part) for part in t.split("*"))
    return re.fullmatch(pattern, fqn) is not None


def yaml_parameters(path: Path, node_name: str, namespace: str = "") -> Dict[str, Any]:
    """The ``ros__parameters`` of one node in a ROS 2 parameter file: every section whose key selects the
    node's fully qualified name (:func:`_node_key_matches`, rcl's rules), applied in file order. A bare
    ``mvs_node:`` key means ``/mvs_node`` (as in ``ros2 launch``), so the package's files use ``/**/mvs_node:``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: not a ROS 2 parameter file (top level must be a mapping)")
    ns = namespace.strip("/")
    fqn = f"/{ns}/{node_name}" if ns else f"/{node_name}"
    out: Dict[str, Any] = {}
    for k, sec in data.items():
        if (isinstance(k, str) and isinstance(sec, dict) and isinstance(sec.get("ros__parameters"), dict)
                and _node_key_matches(k, fqn)):
            out.update(_flatten(sec["ros__parameters"]))
    return out


def parse_value(text: str) -> Any:
    """``key:=value`` values as ``ros2 launch`` / ``--ros-args -p`` read them (YAML scalars)."""
    if text == "":
        return ""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if v is None or isinstance(v, dict) else v


def parse_cli(tokens: Sequence[str]) -> Tuple[Dict[str, str], Dict[str, Dict[str, Any]], Dict[str, str]]:
    """``(launch args, node params {node: {param: value}}, options)`` from ``key:=value`` / ``--key value``."""
    args: Dict[str, str] = {}
    node_params: Dict[str, Dict[str, Any]] = {}
    opts: Dict[str, str] = {}
    toks = list(tokens)
    i = 0
    while i < len(toks):
        t = toks[i]
        if ":=" in t:
            k, v = t.split(":=", 1)
        elif t.startswith("--"):
            k = t[2:]
            if "=" in k:
                k, v = k.split("=", 1)
            elif k in ("help", "print"):
                v = "true"
            elif i + 1 < len(toks):
                i += 1
                v = toks[i]
            else:
                raise LaunchError(f"option --{k} needs a value")
            k = k.replace("-", "_")
            if k in ("duration", "help", "print"):
                opts[k] = v
                i += 1
                continue
        else:
            raise LaunchError(f"unexpected argument {t!r}: use key:=value (or --key value)")
        if "." in k:
            node, param = k.split(".", 1)
            node_params.setdefault(node, {})[param] = parse_value(v)
        else:
            args[k] = v
        i += 1
    return args, node_params, opts


# ---------------------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------------------

@dataclass
class NodeSpec:
    target: str                      # "module:Class"
    name: str
    namespace: str = ""
    param_files: List[Path] = field(default_factory=list)
    params: Dict[str, Any] = field(default_factory=dict)
    remaps: List[Tuple[str, str]] = field(default_factory=list)
    optional: bool = False           # skipped with a warning when its module is not in this install
    ends_run: bool = False           # its exit_code (or end_report) ends the run with that status

    def parameters(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in self.param_files:
            if f.is_file():
                out.update(yaml_parameters(f, self.name, self.namespace))
        out.update(self.params)
        return out


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


def _fusion(a: Dict[str, str], share: Path) -> List[NodeSpec]:
    cfg = Path(a["params_file"]) if a.get("params_file") else share / "config" / "mvs.yaml"
    sim = _bool(a["use_sim_time"])
    specs = [NodeSpec("mvs_depth_ros.ros.mvs_node:MvsNode", "mvs_node", a["namespace"], [cfg],
                      {"model": a["model"], "checkpoint": a["checkpoint"], "device": a["device"],
                       "world_frame": a["world_frame"], "camera_frame": a["camera_frame"],
                       "pose_source": a["pose_source"], "use_sim_time": sim},
                      [("image", a["image"]), ("camera_info", a["camera_info"]), ("pose", a["pose"]),
                       ("odometry", a["odometry"])])]
    if _bool(a["map"]):
        specs.append(NodeSpec("mvs_depth_ros.ros.map_node:MapNode", "map_node", a["namespace"],
                              [share / "config" / "map.yaml"], {"world_frame": a["world_frame"], "use_sim_time": sim},
                              [("image", a["image"])], optional=True))
    return specs


def _stereo(a: Dict[str, str], share: Path) -> List[NodeSpec]:
    cfg = Path(a["params_file"]) if a.get("params_file") else share / "config" / "stereo.yaml"
    bag = a.get("bag", "")
    params = {"model": a["model"], "checkpoint": a["checkpoint"], "device": a["device"],
              "temporal": _bool(a["temporal"]), "world_frame": a["world_frame"],
              "approximate_sync": _bool(a["approximate_sync"]), "use_sim_time": _bool(a["use_sim_time"]) or bool(bag)}
    if bag:   # a played bag must not lose pairs: reliable, every pair in order, the end of the bag reported
        params.update(qos_reliability="reliable", frame_queue=1000, qos_depth=100, queue_size=100,
                      end_of_bag_topic="/end_of_bag")
    specs = [NodeSpec("mvs_depth_ros.ros.stereo_node:StereoNode", "stereo_node", a["namespace"], [cfg], params,
                      [("left/image_rect", a["left_image"]), ("right/image_rect", a["right_image"]),
                       ("left/camera_info", a["left_info"]), ("right/camera_info", a["right_info"])],
                      ends_run=bool(bag))]
    if bag:
        specs.insert(0, NodeSpec("mvs_depth_ros.ros.player_node:PlayerNode", "player", "",
                                 [share / "config" / "player.yaml"],
                                 {"bag": bag, "rate": float(a["rate"]),
                                  "wait_for_topics": [a["left_image"], a["right_image"],
                                                      a["left_info"], a["right_info"]] + [
                                      t.strip() for t in a.get("wait_for", "").split(",") if t.strip()],
                                  "wait_timeout": 60.0, "autostart": False}))
    return specs


def _eval_bag(a: Dict[str, str], share: Path) -> List[NodeSpec]:
    if not a.get("bag"):
        raise LaunchError("eval-bag needs bag:=PATH (a rosbag2 written by `mvs-depth bag convert`)")
    if not _bool(a.get("use_player", "true")):
        raise LaunchError("use_player:=false needs `ros2 bag play`; the one-process runner plays bags with player_node")
    cfg = share / "config"
    dataset = cfg / "datasets" / f"{a['dataset']}.yaml"
    if not dataset.is_file():
        known = sorted(p.stem for p in (cfg / "datasets").glob("*.yaml"))
        raise LaunchError(f"unknown dataset {a['dataset']!r}: no {dataset} (known: {', '.join(known)})")
    try:
        tf_wait, tolerance = float(a["tf_wait"]), float(a["gt_stamp_tolerance"])
    except ValueError as exc:
        raise LaunchError(f"tf_wait / gt_stamp_tolerance must be numbers: {exc}") from None
    end_of_bag, end_of_stream = "/end_of_bag", "/mvs/end_of_stream"   # as launch/eval_bag.launch.py
    return [
        # autostart off: the runner starts playback once every node of the graph exists
        NodeSpec("mvs_depth_ros.ros.player_node:PlayerNode", "player", "", [cfg / "player.yaml", dataset],
                 {"bag": a["bag"], "rate": float(a["rate"]), "wait_timeout": 120.0, "delay": 1.0, "qos_depth": 1000,
                  "wait_for_topics": [a["image"], a["camera_info"], a["gt_depth"], "/tf"], "autostart": False,
                  "end_of_bag_topic": end_of_bag}),
        NodeSpec("mvs_depth_ros.ros.mvs_node:MvsNode", "mvs_node", "mvs", [dataset],
                 {"use_sim_time": True, "model": a["model"], "qos_reliability": "reliable", "frame_queue": 1000,
                  "qos_depth": 1000, "queue_size": 1000, "camera_frame": a["camera_frame"], "tf_timeout": tf_wait,
                  "end_of_bag_topic": end_of_bag},
                 [("image", a["image"]), ("camera_info", a["camera_info"])]),
        NodeSpec("mvs_depth_ros.ros.evaluator_node:EvaluatorNode", "evaluator", "",
                 [cfg / "evaluator.yaml", dataset],
                 {"use_sim_time": True, "output_dir": a["output_dir"], "names_bag": a["bag"], "gt_topic": a["gt_depth"],
                  "qos_depth": 1000,
                  "match_tolerance": tolerance, "end_of_stream_topic": end_of_stream, "end_of_bag_topic": end_of_bag},
                 ends_run=True),
    ]


#: profile -> (launch files whose ARGUMENTS it takes, later files overriding earlier defaults, node builder)
PROFILES: Dict[str, Tuple[Tuple[str, ...], Callable[[Dict[str, str], Path], List[NodeSpec]]]] = {
    "fusion": (("fusion.launch.py",), _fusion),
    "pair": (("fusion.launch.py", "pair.launch.py"), _fusion),  # pair.launch.py includes fusion.launch.py
    "stereo": (("stereo.launch.py",), _stereo),
    "eval-bag": (("eval_bag.launch.py",), _eval_bag),
}


def profile_arguments(profile: str, share: Path) -> Dict[str, Tuple[str, str]]:
    declared: Dict[str, Tuple[str, str]] = {}
    for launch_file in PROFILES[profile][0]:
        declared.update(launch_arguments(share / "launch" / launch_file))
    return declared


def plan(profile: str, args: Dict[str, str], node_params: Optional[Dict[str, Dict[str, Any]]] = None,
         share: Optional[Path] = None) -> List[NodeSpec]:
    """The nodes a profile starts for these arguments (no ROS needed): used by the runner and tests."""
    if profile not in PROFILES:
        raise LaunchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    share = share or share_dir()
    build = PROFILES[profile][1]
    declared = profile_arguments(profile, share)
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise LaunchError(f"unknown argument(s) {', '.join(unknown)} for {profile}; "
                          f"known: {', '.join(declared)} (NODE.param:=value sets a node parameter)")
    values = {k: (d if d is not None else "") for k, (d, _) in declared.items()}
    values.update(args)
    specs = build(values, share)
    for node, params in (node_params or {}).items():
        match = [s for s in specs if s.name == node]
        if not match:
            raise LaunchError(f"{node}.*: no node named {node!r} in {profile} ({', '.join(s.name for s in specs)})")
        match[0].params.update(params)
    return specs


def _help(profile: str, share: Path) -> str:
    launch_file = PROFILES[profile][0][-1]
    lines = [f"mvs-depth launch {profile} [key:=value ...]   (same nodes as launch/{launch_file})", "", "arguments:"]
    for k, (d, h) in profile_arguments(profile, share).items():
        lines.append(f"  {k}:={d if d is not None else '(required)'}\n      {h}")
    lines += ["", "  NODE.param:=value   any parameter of one node (e.g. mvs_node.width:=160)",
              "  --duration S        stop after S seconds", "  --print             show the nodes and exit"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------

def _instantiate(spec: NodeSpec, context):
    from rclpy.parameter import Parameter
    module, cls = spec.target.split(":")
    try:
        node_cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        if spec.optional:
            log.warning("%s is not available in this install (%s): not started", spec.name, exc)
            return None
        raise LaunchError(f"{spec.name}: {spec.target} is not available in this install ({exc})") from exc
    params = []
    for k, v in spec.parameters().items():
        if isinstance(v, list) and not v:
            v = [""]
        params.append(Parameter(k, value=v))
    cli = ["--ros-args"] + [x for a, b in spec.remaps if a != b for x in ("-r", f"{a}:={b}")]
    return node_cls(spec.name, namespace=spec.namespace or None, context=context, parameter_overrides=params,
                    cli_args=cli if len(cli) > 1 else None)


def _end_status(node) -> Optional[int]:
    """The exit status a run-ending node asks for: its ``exit_code`` (evaluator), or 0 / 1 from its
    ``end_report`` (a depth node's end-of-stream report: OK / not); None while it runs."""
    code = getattr(node, "exit_code", None)
    if code is not None:
        return int(code)
    report = getattr(node, "end_report", None)
    if report is not None:
        return 0 if report.level in (b"\x00", 0) else 1
    return None


def run(specs: List[NodeSpec], duration: float = 0.0) -> int:
    """Start the nodes, spin them until Ctrl-C / SIGTERM / ``duration`` / the end of a played bag (the node of
    the spec with ``ends_run`` says so: the evaluator, or the stereo node; its status is the run's)."""
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(share_dir() / "config" / "fastdds_profile.xml"))
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from .conversions import tune_allocator_for_large_messages
    tune_allocator_for_large_messages()
    from rclpy.signals import SignalHandlerOptions
    context = rclpy.context.Context()
    stop = threading.Event()   # SIGINT / SIGTERM: stop spinning, destroy the nodes while the context is valid
    previous = ({sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    nodes = []
    ender = None
    rc = 0
    # single-threaded: see node_main.spin_node (the multi-threaded executor starved the nodes' workers)
    executor = SingleThreadedExecutor(context=context)
    try:
        for spec in specs:
            node = _instantiate(spec, context)
            if node is not None:
                nodes.append(node)
                executor.add_node(node)
                log.info("started %s (%s)", node.get_fully_qualified_name(), spec.target)
                if spec.ends_run:
                    ender = node
        for node in nodes:  # sources created with autostart:=false begin once the whole graph exists
            if hasattr(node, "start") and node.has_parameter("autostart") and not node.get_parameter("autostart").value:
                node.start()
        t_end = time.monotonic() + duration if duration > 0 else None
        while context.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
            if t_end is not None and time.monotonic() >= t_end:
                log.info("duration reached: stopping")
                break
            code = _end_status(ender) if ender is not None else None
            if code is not None:
                rc = code
                if code:
                    print(f"mvs-depth launch: run incomplete ({ender.get_name()} ended with status {code}; its log "
                          f"says which frames were lost or dropped)", file=sys.stderr)
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except LaunchError as exc:
        print(f"mvs-depth launch: {exc}", file=sys.stderr)
        rc = 2
    except Exception as exc:  # noqa: BLE001 - a node that fails to start: say which and why
        print(f"mvs-depth launch: {type(exc).__name__}: {exc}", file=sys.stderr)
        rc = 2
    finally:
        for node in nodes:  # in start order: the player first, the evaluator last (it writes its results)
            try:
                executor.remove_node(node)
                node.destroy_node()
            except Exception as exc:  # noqa: BLE001
                log.warning("destroying %s: %s", node.get_name(), exc)
        executor.shutdown()
        if context.ok():
            rclpy.shutdown(context=context)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rc


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    profile, rest = argv[0], argv[1:]
    try:
        share = share_dir()
        if profile not in PROFILES:
            raise LaunchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
        args, node_params, opts = parse_cli(rest)
        if _bool(opts.get("help", "false")):
            print(_help(profile, share))
            return 0
        specs = plan(profile, args, node_params, share)
        if _bool(opts.get("print", "false")):
            for s in specs:
                print(f"{s.name} ({s.target}) ns={s.namespace or '/'} remaps={s.remaps}\n  params={s.parameters()}")
            return 0
        duration = float(opts.get("duration", 0) or 0)
    except (LaunchError, ValueError, OSError) as exc:
        print(f"mvs-depth launch: {exc}", file=sys.stderr)
        return 2
    try:
        import rclpy  # noqa: F401
    except ImportError as exc:
        print(f"mvs-depth launch: rclpy is not importable ({exc}); run tools/install_ros.sh or source ROS 2",
              file=sys.stderr)
        return 2
    # runs that play a bag stop by themselves when it has been played and every frame is accounted for
    return run(specs, duration)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    sys.exit(cli_main())
