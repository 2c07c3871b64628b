"""Official file layout: bit-exact round trip of synthetic checkpoints, strict validation, clear errors."""

import json

import pytest
import torch
from helpers import random_model
from safetensors.torch import load_file, save_file

from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import OFFICIAL_FILES, get_config, infer_config, load_official, save_official
from flashvsr_q.model.loading import CONFIG_SIDECAR


@pytest.fixture
def saved(tmp_path):
    model = random_model("test")
    save_official(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    assert {p.name for p in path.iterdir()} == set(OFFICIAL_FILES.values()) | {CONFIG_SIDECAR}
    loaded = load_official(path, dtype=torch.float32)
    assert loaded.config == model.config
    ref = model.state_dict()
    for key, value in loaded.state_dict().items():
        expected = ref[key].to(torch.bfloat16).float() if key.startswith(("lq_proj.", "prompt")) else ref[key]
        assert torch.equal(value, expected), key  # LQ and prompt files are bf16, as in the official release


def test_file_formats_are_the_official_ones(saved):
    _, path = saved
    dit = load_file(path / OFFICIAL_FILES["dit"])
    assert all(v.dtype == torch.float32 for v in dit.values())
    lq = torch.load(path / OFFICIAL_FILES["lq_proj"], weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in lq.values()) and "conv1.weight" in lq
    tc = torch.load(path / OFFICIAL_FILES["decoder"], weights_only=True)
    assert all(v.dtype == torch.float32 for v in tc.values()) and "decoder.26.bias" in tc
    prompt = torch.load(path / OFFICIAL_FILES["prompt"], weights_only=True)
    assert isinstance(prompt, torch.Tensor) and prompt.dtype == torch.bfloat16


def test_loads_in_bf16_and_on_meta_first(saved):
    _, path = saved
    model = load_official(path)
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in model.parameters())


def test_refuses_to_overwrite(saved):
    model, path = saved
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_official(model, path)


def test_missing_file(saved):
    _, path = saved
    (path / OFFICIAL_FILES["decoder"]).unlink()
    with pytest.raises(CheckpointError, match="missing TCDecoder.ckpt"):
        load_official(path)


def test_truncated_dit(saved):
    _, path = saved
    f = path / OFFICIAL_FILES["dit"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_official(path)


def test_corrupt_torch_file(saved):
    _, path = saved
    (path / OFFICIAL_FILES["lq_proj"]).write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="LQ_proj_in.ckpt: not a readable torch checkpoint"):
        load_official(path)


def test_mismatched_keys_are_listed(saved):
    _, path = saved
    f = path / OFFICIAL_FILES["dit"]
    sd = load_file(f)
    sd["blocks.0.self_attn.q.weight"] = sd["blocks.0.self_attn.q.weight"][:, :8].contiguous()
    del sd["head.head.bias"]
    sd["img_emb.proj.weight"] = torch.zeros(2, 2)
    save_file(sd, f)
    with pytest.raises(CheckpointError) as err:
        load_official(path)
    msg = str(err.value)
    assert "1 missing: head.head.bias" in msg and "1 unexpected: img_emb.proj.weight" in msg
    assert "wrong shape: blocks.0.self_attn.q.weight [64, 8] (expected [64, 64])" in msg
    assert "\n" not in msg


def test_wrong_model_version(saved, tmp_path):
    """A `small` checkpoint loaded as a `test` model (or an official folder of another size) is refused."""
    _, path = saved
    small = random_model("small")
    save_official(small, tmp_path / "small")
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_official(tmp_path / "small", get_config("test"))
    (path / CONFIG_SIDECAR).write_text(json.dumps({**get_config("test").to_dict(), "lq_variant": "v2"}))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_official(path)


def test_official_folders_need_no_sidecar(tmp_path):
    model = random_model("test")
    save_official(model, tmp_path)
    (tmp_path / CONFIG_SIDECAR).unlink()
    with pytest.raises(CheckpointError, match="does not match"):
        infer_config(tmp_path)  # a test-size DiT is not the official architecture


def test_weights_only_loading(saved, tmp_path):
    """A pickle that would run code is rejected (torch.load weights_only=True)."""
    _, path = saved

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv1.weight": Evil()}, path / OFFICIAL_FILES["lq_proj"])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_official(path)
