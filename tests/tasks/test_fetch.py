"""`fetch`: official files downloaded (through a fake hub), verified, renamed into place; release names resolve."""

import hashlib
from pathlib import Path

import pytest
from helpers import random_model
from huggingface_hub.errors import LocalEntryNotFoundError

import flashvsr_q.tasks.fetch as fetch_module
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
