"""`fetch`: official files downloaded (through a fake hub), verified, renamed into place; release names resolve
(also as ``--checkpoint flashvsr-v1.1``, with the Full pipeline's VAE); offline is a one-line error."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image

import flashvsr_q.tasks.fetch as fetch_module
from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import is_official_layout, save_official
from flashvsr_q.model.official_release import (
    ENV_ROOT,
    RELEASES,
    ReleaseFile,
    release_dir,
    release_files,
    resolve_release_name,
)
from flashvsr_q.model.wan_vae import WAN_VAE_PRESETS
from flashvsr_q.model.wan_vae_file import WAN_VAE_FILE, save_wan_vae, synthetic_wan_vae_state
from flashvsr_q.tasks.fetch import STAGING, FetchError, FetchOptions, fetch

CONTENT = {"dit.safetensors": b"dit" * 100, "lq.ckpt": b"lq" * 50, "dec.ckpt": b"dec", "prompt.pth": b"prompt"}


def fake_release(sha_of=lambda data: hashlib.sha256(data).hexdigest()) -> list[ReleaseFile]:
    return [ReleaseFile(name, len(data), sha_of(data), repo="Org/Repo", revision="abc")
            if name != "prompt.pth" else ReleaseFile(name, len(data), sha_of(data), url="https://example/prompt.pth")
            for name, data in CONTENT.items()]


class FakeHub:
    """Stands in for hf_hub_download and the prompt's URL download; can fail on chosen files."""

    def __init__(self, monkeypatch, files: list[ReleaseFile], content: dict[str, bytes] | None = None):
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.content = content or CONTENT
        monkeypatch.setattr(fetch_module, "release_files", lambda version, full=False: files)
        monkeypatch.setattr(fetch_module, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(fetch_module, "_download_url", self.download_url)

    def hf_hub_download(self, repo_id, filename, *, revision, local_dir):
        assert (repo_id, revision) == ("Org/Repo", "abc")
        return str(self._write(filename, Path(local_dir) / filename))

    def download_url(self, url, path):
        assert url == "https://example/prompt.pth"
        return self._write(path.name, path)

    def _write(self, name: str, path: Path) -> Path:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.content[name])
        return path


def test_fetch_downloads_verifies_and_renames(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, fake_release())
    messages = []
    out = fetch(FetchOptions("v1.1", tmp_path / "w"), report=messages.append)
    assert out == tmp_path / "w"
    assert sorted(p.name for p in out.iterdir()) == sorted(CONTENT)  # staging removed, nothing else
    assert all((out / name).read_bytes() == data for name, data in CONTENT.items())
    assert hub.calls == list(CONTENT)
    assert messages[-1].endswith(str(out))


def test_fetch_keeps_verified_files_and_refuses_a_different_one(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, fake_release())
    (tmp_path / "dit.safetensors").write_bytes(CONTENT["dit.safetensors"])
    fetch(FetchOptions("v1.1", tmp_path), report=lambda m: None)
    assert "dit.safetensors" not in hub.calls  # already there and verified: not downloaded again
    (tmp_path / "lq.ckpt").write_bytes(b"someone else's file")
    with pytest.raises(FetchError, match="refusing to overwrite") as exc:
        fetch(FetchOptions("v1.1", tmp_path), report=lambda m: None)
    assert "\n" not in str(exc.value)
    assert (tmp_path / "lq.ckpt").read_bytes() == b"someone else's file"


def test_fetch_refuses_a_corrupt_download(tmp_path, monkeypatch):
    FakeHub(monkeypatch, fake_release(), content=CONTENT | {"lq.ckpt": b"truncated"})
    with pytest.raises(FetchError, match="lq.ckpt .*SHA-256"):
        fetch(FetchOptions("v1.1", tmp_path), report=lambda m: None)
    assert not (tmp_path / "lq.ckpt").exists()  # nothing unverified under an official name
    assert not list((tmp_path / STAGING).rglob("lq.ckpt"))  # and nothing to resume from


def test_fetch_offline_is_one_line_naming_repo_and_file(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, fake_release())
    hub.fail["lq.ckpt"] = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.\nx")
    with pytest.raises(FetchError) as exc:
        fetch(FetchOptions("v1.1", tmp_path), report=lambda m: None)
    message = str(exc.value)
    assert "\n" not in message
    assert "network down" in message and "Org/Repo" in message and "lq.ckpt" in message and "by hand" in message
    # the run resumes: what was verified stays, only the rest is downloaded
    assert (tmp_path / "dit.safetensors").is_file()
    hub.fail.clear()
    hub.calls.clear()
    fetch(FetchOptions("v1.1", tmp_path), report=lambda m: None)
    assert hub.calls == ["lq.ckpt", "dec.ckpt", "prompt.pth"]


def test_fetch_unknown_hash_downloads_and_says_unverified(tmp_path, monkeypatch):
    FakeHub(monkeypatch, fake_release(sha_of=lambda data: None))
    messages = []
    fetch(FetchOptions("v1", tmp_path), report=messages.append)
    assert any("not verified" in m for m in messages)


def test_release_manifest_matches_the_spec():
    # spec §8 gives the v1.1 hashes abbreviated: the full values must agree with its prefix and suffix
    spec = {"dit": ("bd28180e", "37be"), "lq_proj": ("d6d011cd", "bfd2"), "decoder": ("e224bdcf", "6161"),
            "vae": ("38071ab5", "d981"), "prompt": ("4601107a", "b1ef")}
    for part, (prefix, suffix) in spec.items():
        sha = RELEASES["v1.1"][part].sha256
        assert len(sha) == 64 and sha.startswith(prefix) and sha.endswith(suffix)
    names = [f.name for f in release_files("v1.1")]
    assert names == ["diffusion_pytorch_model_streaming_dmd.safetensors", "LQ_proj_in.ckpt", "TCDecoder.ckpt",
                     "posi_prompt.pth"]
    assert [f.name for f in release_files("v1", full=True)][-1] == WAN_VAE_FILE
    assert RELEASES["v1"]["dit"].repo == "JunhaoZhuang/FlashVSR"
    assert RELEASES["v1.1"]["dit"].repo == "JunhaoZhuang/FlashVSR-v1.1"
    with pytest.raises(CheckpointError, match="choose one of v1, v1.1"):
        release_files("v2")


def test_release_name_resolves_the_fetched_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    with pytest.raises(CheckpointError, match=r"not downloaded: .* run `flashvsr-q fetch v1.1`") as exc:
        resolve_release_name("flashvsr-v1.1")
    assert "\n" not in str(exc.value) and str(tmp_path) in str(exc.value)
    folder = release_dir("v1.1")
    assert folder == tmp_path / "FlashVSR-v1.1"
    save_official(random_model("test"), folder)  # the layout fetch leaves: the four official files
    assert resolve_release_name("FlashVSR-v1.1") == folder and is_official_layout(folder)
    with pytest.raises(CheckpointError, match=r"Wan2.1_VAE.pth missing .* fetch v1.1 --full"):
        resolve_release_name("flashvsr-v1.1", full=True)
    save_wan_vae(synthetic_wan_vae_state(WAN_VAE_PRESETS["small"]), folder / WAN_VAE_FILE)
    assert resolve_release_name("flashvsr-v1.1", full=True) == folder
    with pytest.raises(CheckpointError, match="unknown checkpoint name"):
        resolve_release_name("flashvsr-v3")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashvsr_q.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_fetch_command_offline_is_one_line_error(tmp_path):
    proc = _cli("fetch", "v1.1", "--full", "--dir", str(tmp_path / "v11"), env={"HF_HUB_OFFLINE": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "diffusion_pytorch_model_streaming_dmd.safetensors" in lines[0] and "JunhaoZhuang/FlashVSR-v1.1" in lines[0]
    assert f"into {tmp_path / 'v11'}/" in lines[0]  # what to download and where to put it
    assert not (tmp_path / "v11" / "diffusion_pytorch_model_streaming_dmd.safetensors").exists()


def test_checkpoint_name_loads_the_fetched_folder_with_its_vae(tmp_path, monkeypatch):
    """``--checkpoint flashvsr-v1.1`` (a name) resolves through the fetch folder, for both pipelines; before the
    download it is a one-line error that names the command."""
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = ("upscale", str(image), "-o", str(tmp_path / "out.png"), "--checkpoint", "flashvsr-v1.1", "--device",
            "cpu", "--dry-run")
    env = {ENV_ROOT: str(tmp_path)}
    proc = _cli(*args, "--pipeline", "full", env=env)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "flashvsr-q fetch v1.1 --full" in proc.stderr and str(tmp_path / "FlashVSR-v1.1") in proc.stderr

    folder = release_dir("v1.1")
    save_official(random_model("test"), folder)
    assert load_checkpoint("flashvsr-v1.1").pipeline == "tiny"
    with pytest.raises(CheckpointError, match=r"Wan2.1_VAE.pth missing .* fetch v1.1 --full"):
        load_checkpoint("flashvsr-v1.1", pipeline="full")
    save_wan_vae(synthetic_wan_vae_state(WAN_VAE_PRESETS["small"]), folder / WAN_VAE_FILE)
    model = load_checkpoint("flashvsr-v1.1", pipeline="full")
    assert model.pipeline == "full" and model.vae.config.base_dim == 8
    proc = _cli(*args, "--pipeline", "full", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["pipeline"] == "full"
