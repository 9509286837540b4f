"""Middlebury reader (PFM, calib.txt, scene loader) and the classical backend on Motorcycle-Q."""
import struct

import numpy as np
import pytest
from conftest import require_shared

from mvs_depth_ros.data.middlebury import (MiddleburyError, load_middlebury, middlebury_num_disparities, read_calib,
                                           read_pfm, write_pfm)
from mvs_depth_ros.eval.stereo_metrics import depth_abs_rel, disparity_metrics
from mvs_depth_ros.models.stereo import build


def test_pfm_round_trip_and_orientation(tmp_path):
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    img[1, 2] = np.inf
    write_pfm(tmp_path / "a.pfm", img)
    raw = (tmp_path / "a.pfm").read_bytes()
    assert raw.startswith(b"Pf\n4 3\n-1.0\n")
    # stored bottom-up: the first stored row is the image's last row
    first = np.frombuffer(raw[len(b"Pf\n4 3\n-1.0\n"):][:16], "<f4")
    np.testing.assert_array_equal(first, img[2])
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), img)
    rgb = np.random.default_rng(0).random((2, 3, 3)).astype(np.float32)
    write_pfm(tmp_path / "c.pfm", rgb)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), rgb)


def test_pfm_big_endian_and_errors(tmp_path):
    img = np.array([[1.5, -2.0], [3.0, 4.25]], np.float32)
    data = b"Pf\n2 2\n1.0\n" + img[::-1].astype(">f4").tobytes()   # positive scale: big-endian
    (tmp_path / "b.pfm").write_bytes(data)
    np.testing.assert_array_equal(read_pfm(tmp_path / "b.pfm"), img)
    (tmp_path / "bad.pfm").write_bytes(b"P6\n2 2\n255\n")
    with pytest.raises(MiddleburyError, match="not a PFM"):
        read_pfm(tmp_path / "bad.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n2 2\n-1.0\n" + struct.pack("<f", 1.0))
    with pytest.raises(MiddleburyError, match="truncated"):
        read_pfm(tmp_path / "short.pfm")


def test_calib_parser(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text("cam0=[100 0 50; 0 100 40; 0 0 1]\ncam1=[100 0 60; 0 100 40; 0 0 1]\ndoffs=10\n"
                 "baseline=120.5\nwidth=100\nheight=80\nndisp=70\nvmin=3\n")
    c = read_calib(p)
    assert c.K0[0, 2] == 50 and c.K1[0, 2] == 60 and c.doffs == 10 and c.baseline_m == pytest.approx(0.1205)
    assert (c.width, c.height, c.ndisp) == (100, 80, 70) and c.extra == {"vmin": "3"}
    assert middlebury_num_disparities(c) == 80
    p.write_text("cam0=[100 0 50; 0 100 40; 0 0 1]\n")
    with pytest.raises(MiddleburyError, match="missing key"):
        read_calib(p)


@pytest.fixture(scope="module")
def motorcycle():
    return load_middlebury(require_shared("data", "middlebury-2014-motorcycle-q"))


def test_load_motorcycle(motorcycle):
    f, c = motorcycle.frame, motorcycle.calib
    assert f.left.shape == (497, 741, 3) and f.right.shape == f.left.shape
    assert f.baseline == pytest.approx(0.193001) and f.doffs == pytest.approx(32.778)
    assert f.K[0, 0] == pytest.approx(999.421) and f.K[0, 2] == pytest.approx(294.182)
    d = f.disparity_gt
    assert d.dtype == np.float32 and np.isnan(d).any() and not np.isinf(d).any()
    valid = np.isfinite(d)
    assert c.extra["vmin"] and float(c.extra["vmin"]) - 2 < np.nanmin(d) and np.nanmax(d) < float(c.extra["vmax"]) + 2
    # Z[mm] = baseline * f / (d + doffs)
    v, u = np.argwhere(valid)[1234]
    assert motorcycle.depth_gt[v, u] * 1000 == pytest.approx(193.001 * 999.421 / (d[v, u] + 32.778), rel=1e-5)
    assert motorcycle.nonocc.dtype == bool and 0.5 < motorcycle.nonocc.mean() < 1.0
    assert motorcycle.disparity_right_gt.shape == d.shape


def test_sgbm_on_motorcycle(motorcycle):
    f = motorcycle.frame
    est = build(num_disparities=middlebury_num_disparities(motorcycle.calib), block_size=3, uniqueness_levels=())
    r = est.estimate(f)
    m = disparity_metrics(r.disparity, f.disparity_gt, motorcycle.nonocc)
    assert m["epe"] < 1.0 and m["bad2"] < 6.0 and m["coverage"] > 0.7, m
    # depth uses doffs: abs_rel stays small only with the right formula
    assert depth_abs_rel(r.depth, motorcycle.depth_gt, motorcycle.nonocc) < 0.03
