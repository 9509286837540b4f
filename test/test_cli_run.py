"""`mvs-depth run` end to end on the embedded synthetic sequence: output contract, accuracy, determinism."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mvs_depth_ros.cli import main as cli_main

ARGS = ["--synthetic-frames", "16", "--width", "128", "--height", "96", "--pictures", "2"]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli_main(["run", *ARGS, "--out", str(out)]) == 0
    return out


def test_output_contract(online_run):
    out = online_run
    lines = (out / "keyframes.txt").read_text().splitlines()
    assert len(lines) >= 3
    data = json.loads((out / "metrics.json").read_text())
    assert data["summary"]["keyframes"] == len(lines) == len(data["per_frame"])
    for line, row in zip(lines, data["per_frame"]):
        ref, *meas = line.split()
        assert ref == row["name"] + ".png" and 1 <= len(meas) <= 2
        depth = np.load(out / "depth" / f"{row['name']}.npy")
        conf = np.load(out / "confidence" / f"{row['name']}.npy")
        assert depth.dtype == np.float32 and depth.shape == (96, 128)
        assert conf.dtype == np.float32 and conf.shape == (96, 128)
        assert np.nanmin(depth) > 0 and np.all((conf >= 0) & (conf <= 1))
        assert set(row["dense"]) >= {"abs_rel", "abs", "sq_rel", "rmse", "a1", "a2", "a3", "coverage"}
    assert (out / "pictures" / "overview.png").stat().st_size > 1000


def test_default_estimator_is_accurate_on_synthetic(online_run):
    summary = json.loads((online_run / "metrics.json").read_text())["summary"]
    assert summary["model"] == "planesweep"
    assert summary["dense"]["abs_rel"] < 0.10 and summary["dense"]["a1"] > 0.9
    assert summary["filtered"]["coverage"] < summary["dense"]["coverage"]
    assert summary["filtered"]["abs_rel"] <= summary["dense"]["abs_rel"]


def test_index_file_replays_the_online_run(online_run, tmp_path):
    """Feeding the written keyframes.txt back reproduces the online depth maps exactly."""
    out = tmp_path / "replay"
    assert cli_main(["run", *ARGS, "--keyframes", str(online_run / "keyframes.txt"), "--out", str(out),
                     "--pictures", "0"]) == 0
    assert (out / "keyframes.txt").read_text() == (online_run / "keyframes.txt").read_text()
    for f in (online_run / "depth").glob("*.npy"):
        np.testing.assert_array_equal(np.load(f), np.load(out / "depth" / f.name))


def test_console_script_help_and_bad_model():
    exe = [sys.executable, "-m", "mvs_depth_ros.cli"]
    r = subprocess.run(exe + ["run", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--keyframes" in r.stdout
    r = subprocess.run(exe + ["run", "--model", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_learned_model_without_checkpoint_falls_back(tmp_path, caplog):
    import logging
    with caplog.at_level(logging.WARNING):
        assert cli_main(["run", *ARGS, "--model", "itermvs", "--out", str(tmp_path), "--pictures", "0"]) == 0
    assert "falling back to the classical 'planesweep'" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["model"] == "planesweep"


def test_temporal_fusion_modes(online_run, tmp_path):
    """Causal fusion (the default) fuses every keyframe after the first with earlier ones; offline fusion also
    uses later ones (the first keyframe too); off leaves the estimator's depth."""
    causal = json.loads((online_run / "metrics.json").read_text())
    runs = {"causal": causal}
    for mode in ("off", "offline"):
        out = tmp_path / mode
        assert cli_main(["run", *ARGS, "--temporal-fusion", mode, "--out", str(out), "--pictures", "0"]) == 0
        runs[mode] = json.loads((out / "metrics.json").read_text())
    n = {m: [row["fusion_keyframes"] for row in r["per_frame"]] for m, r in runs.items()}
    assert causal["summary"]["settings"]["temporal_fusion"] == "causal"
    assert n["off"] == [0] * len(n["off"]) and runs["off"]["summary"]["pipeline"]["fused"] == 0
    assert n["causal"][0] == 0 and all(k > 0 for k in n["causal"][1:])
    assert causal["summary"]["pipeline"]["fused"] == len(n["causal"]) - 1
    assert all(k > 0 for k in n["offline"]) and n["offline"][0] > n["causal"][0]
    name = causal["per_frame"][-1]["name"]
    off, fused = (np.load(tmp_path / "off" / "depth" / f"{name}.npy"), np.load(online_run / "depth" / f"{name}.npy"))
    assert np.isfinite(fused).sum() >= np.isfinite(off).sum() and not np.array_equal(off, fused)
