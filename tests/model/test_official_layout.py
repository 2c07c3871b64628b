"""The official architecture on `meta`: parameter counts, key names and shapes as in the spec and the official files."""

import json

import pytest
import torch
from helpers import CONFORMANCE

from flashvsr_q.model import FlashVSR, count_parameters, get_config


@pytest.fixture(scope="module")
def official():
    with torch.device("meta"):
        return FlashVSR(get_config("flashvsr-v1.1"))


def test_parameter_counts_match_the_spec(official):
    assert count_parameters(official.dit) == (1_418_996_800, 825)
    assert count_parameters(official.lq_proj) == (287_845_888, 8)
    assert count_parameters(official.decoder) == (45_338_371, 66)
    assert official.prompt.shape == (1, 512, 4096)
    assert all(p.is_meta for p in official.parameters())


def test_per_block_parameters(official):
    assert count_parameters(official.dit.blocks[0])[0] == 46_440_704


@pytest.mark.skipif(not (CONFORMANCE / "keys.json").exists(), reason="shared/conformance not available")
def test_keys_and_shapes_match_the_official_modules(official):
    spec = json.loads((CONFORMANCE / "keys.json").read_text())["configs"]["L30"]["keys"]
    for group, module in (("dit", official.dit), ("lq", official.lq_proj), ("tc", official.decoder)):
        ours = [(k, list(v.shape)) for k, v in module.state_dict().items()]
        theirs = [(k, s) for k, s, _ in spec[group]]
        assert sorted(ours) == sorted(theirs), group
        if group != "dit":  # torch-zip files keep the module's own order
            assert ours == theirs, group


def test_v1_and_v1_1_share_the_layout():
    with torch.device("meta"):
        v1, v11 = FlashVSR(get_config("flashvsr-v1")), FlashVSR(get_config("flashvsr-v1.1"))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(v1) == shapes(v11)
    assert v1.lq_proj.variant == "v1" and v11.lq_proj.variant == "v1.1"


def test_every_preset_builds_on_meta():
    from flashvsr_q.model import PRESETS

    for name in PRESETS:
        with torch.device("meta"):
            model = FlashVSR(get_config(name))
        assert all(p.is_meta for p in model.parameters()), name


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="flashvsr-v1.1"):
        get_config("flashvsr-v2")


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        get_config("test").replace(num_heads=3)
    cfg = get_config("small")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
