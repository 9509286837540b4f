"""``mvs-depth stereo``: the output contract and sane metrics on a short synthetic stereo video, Middlebury
Motorcycle-Q (shared data) and a converted stereo bag (the same numbers as the frames it was made from)."""
import json

import numpy as np
import pytest

from conftest import require_shared
from mvs_depth_ros.apps.stereo import main
from mvs_depth_ros.data.synthetic import render_stereo_sequence
from mvs_depth_ros.eval.stereo_metrics import disparity_metrics

W, H, N = 160, 128, 4
ARGS = ["--frames", str(N), "--width", str(W), "--height", str(H), "--baseline", "0.1"]


@pytest.fixture(scope="module")
def pairs():
    return render_stereo_sequence(N, W, H, baseline=0.1, seed=0)


def test_synthetic_video_writes_the_contract_files(tmp_path, pairs, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--temporal", "--confidence-threshold", "0.5", "--pictures", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "EPE px" in printed and "TEPE" in printed
    m = json.loads((out / "metrics.json").read_text())
    s, rows = m["summary"], m["per_frame"]
    assert [r["name"] for r in rows] == [f.name for f in pairs]
    assert s["pairs"] == N and s["temporal"] and s["num_disparities"] == 16 and s["width"] == W
    # sane numbers on the exact synthetic disparity (3.7-8.6 px here)
    assert s["epe"] < 0.5 and s["bad3"] < 2.0 and s["coverage"] > 0.75 and s["abs_rel"] < 0.05, s
    assert 0 < s["tepe"] < 0.5 and s["filtered"]["coverage"] <= s["coverage"] + 1e-9
    for f, r in zip(pairs, rows):
        d = np.load(out / "disparity" / f"{f.name}.npy")
        z = np.load(out / "depth" / f"{f.name}.npy")
        c = np.load(out / "confidence" / f"{f.name}.npy")
        for a in (d, z, c):
            assert a.dtype == np.float32 and a.shape == (H, W)
        assert c.min() >= 0 and c.max() <= 1
        ok = np.isfinite(d)
        np.testing.assert_array_equal(ok, np.isfinite(z))
        np.testing.assert_allclose(z[ok], f.K[0, 0] * 0.1 / d[ok], rtol=1e-5)   # Z = f B / d
        # metrics.json says what the saved disparity scores against the ground truth
        again = disparity_metrics(d, f.disparity_gt)
        assert r["epe"] == pytest.approx(again["epe"]) and r["coverage"] == pytest.approx(again["coverage"])
    pics = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert pics == sorted([f"{pairs[0].name}.png", f"{pairs[-1].name}.png", "overview.png"])
    import cv2
    panel = cv2.imread(str(out / "pictures" / "overview.png"))
    assert panel.shape == (2 * H, 5 * W, 3)   # left | disparity | GT | error | confidence, 2 rows


def test_temporal_filter_lowers_flicker(tmp_path):
    """The temporal stage's reason to exist, through the CLI: TEPE drops, EPE does not rise much."""
    args = ["--frames", "6", "--width", str(W), "--height", str(H), "--pictures", "0"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--temporal", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["summary"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["summary"]
    assert b["tepe"] < 0.9 * a["tepe"], (a["tepe"], b["tepe"])
    assert b["epe"] < 1.05 * a["epe"], (a["epe"], b["epe"])


def test_middlebury_motorcycle(tmp_path):
    root = require_shared("data", "middlebury-2014-motorcycle-q")
    out = tmp_path / "mb"
    assert main(["--middlebury", str(root), "--block-size", "3", "--out", str(out), "--pictures", "1"]) == 0
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["num_disparities"] == 80 and s["doffs_px"] == pytest.approx(32.778)
    assert s["nonocc"]["epe"] < 1.0 and s["nonocc"]["bad2"] < 6.0 and s["nonocc"]["coverage"] > 0.8, s
    assert s["nonocc"]["abs_rel"] < 0.02, s
    assert s["tepe"] is None   # one pair: no temporal EPE (NaN is written as null)
    d = np.load(out / "disparity" / "middlebury-2014-motorcycle-q.npy")
    assert d.shape == (497, 741)
    assert (out / "pictures" / "overview.png").is_file()


def test_stereo_bag_input_gives_the_same_numbers(tmp_path, pairs):
    from mvs_depth_ros.data.stereo_bags import write_stereo_bag
    bag = tmp_path / "bag"
    write_stereo_bag(pairs, bag, rate=10.0)
    assert main(["--bag", str(bag), "--pictures", "0", "--out", str(tmp_path / "bag_run")]) == 0
    assert main(ARGS + ["--pictures", "0", "--out", str(tmp_path / "direct")]) == 0
    a = json.loads((tmp_path / "bag_run" / "metrics.json").read_text())
    b = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    assert [r["name"] for r in a["per_frame"]] == [r["name"] for r in b["per_frame"]]
    for ra, rb in zip(a["per_frame"], b["per_frame"]):
        assert ra["epe"] == rb["epe"] and ra["coverage"] == rb["coverage"]


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["--middlebury", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["--bag", str(tmp_path / "nobag"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(ARGS + ["--num-disparities", "20", "--out", str(tmp_path / "o")]) == 2
    assert "multiple of 16" in capsys.readouterr().err
