"""Checkpoint loading is safe: pickles that would run code are refused, mismatches are readable."""
import os
import pickle

import pytest
import torch

from conftest import require_shared
from mvs_depth_ros.models.checkpoints import (CheckpointError, extract_state_dict, load_checkpoint,
                                              load_state_dict_strict)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch {}",))


def test_malicious_pickle_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load.*execute arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_raw_pickle_file_is_rejected(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_plain_checkpoint_and_prefix(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "c.ckpt")
    loaded = extract_state_dict(load_checkpoint(tmp_path / "c.ckpt"))
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    load_state_dict_strict(fresh, loaded)
    assert torch.equal(fresh[0].weight, net[0].weight)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file
    net = torch.nn.Linear(3, 2)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    fresh = torch.nn.Linear(3, 2)
    load_state_dict_strict(fresh, extract_state_dict(load_checkpoint(tmp_path / "w.safetensors")))
    assert torch.equal(fresh.weight, net.weight)


def test_mismatch_message_lists_everything():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 1))
    sd = dict(net.state_dict())
    sd.pop("1.bias")
    sd["0.weight"] = torch.zeros(4, 1, 3, 3)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(net, sd, "TestNet")
    msg = str(err.value)
    assert "TestNet" in msg and "missing keys: 1.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "0.weight: checkpoint (4, 1, 3, 3) vs network (2, 1, 3, 3)" in msg


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a checkpoint|not a readable torch checkpoint|refused"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_every_unusable_checkpoint_is_one_clear_checkpoint_error(tmp_path):
    """What a user mistypes or a disk corrupts: one CheckpointError naming the problem, never an IndexError /
    KeyError from deep inside the unpickler (issue 14)."""
    from mvs_depth_ros.models.registry import create_model
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    good = tmp_path / "other_net.ckpt"
    torch.save({"model": net.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("model weights go here\n" * 10)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    expect = {"truncated.ckpt": "truncated or corrupt", "text.ckpt": "corrupt or not a checkpoint",
              "empty.ckpt": "the file is empty", "other_net.ckpt": "does not match"}
    for model in ("itermvs", "patchmatchnet"):
        for name, why in expect.items():
            with pytest.raises(CheckpointError, match=why) as err:
                create_model(model, str(tmp_path / name), "cpu")
            assert "\n" not in str(err.value).strip() or name == "other_net.ckpt"
    with pytest.raises(CheckpointError, match="planesweep' has no weights.*would be ignored"):
        create_model("planesweep", str(good), "cpu")


def test_model_options_are_parsed_and_checked():
    """``KEY=VALUE`` options (CLI ``--model-option``, the node's ``model_options``): YAML scalars; an option the model
    does not take is a ValueError naming it (not a CheckpointError blaming the weights); a learned model falling
    back to the plane sweep (no checkpoint) drops the options the sweep does not take."""
    from mvs_depth_ros.models.registry import create_model, parse_model_options
    assert parse_model_options("compile=true, n_planes=32 window=5") == {"compile": True, "n_planes": 32, "window": 5}
    assert parse_model_options(["p2=1.5", "subplane_fit=mean"]) == {"p2": 1.5, "subplane_fit": "mean"}
    assert parse_model_options("") == {}
    for bad in ("compile", "=3", "a=[1,"):
        with pytest.raises(ValueError, match="model option"):
            parse_model_options(bad)
    ckpt = require_shared("weights", "itermvs", "blendedmvs", "model_000015.ckpt")
    with pytest.raises(ValueError, match="does not take that option.*no_such_option"):
        create_model("itermvs", str(ckpt), "cpu", no_such_option=1)
    est = create_model("itermvs", None, "cpu", compile=True, n_planes=12)
    assert est.name == "planesweep" and est.config.n_planes == 12


def test_unavailable_device_is_a_clear_error():
    from mvs_depth_ros.models.base import resolve_device
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: device=cuda is available")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")
