"""The data loader, worked backwards from the training loop: tokenize, pack into fixed blocks, write token shards,
and read them back fast, correctly split across ranks and workers, resumable mid-epoch.

Defined for notebook 06 (book chapter 6, data loaders); the training program of chapters 5 and 9 reads the same
shards. Needs numpy and torch; `tokenize_dataset` takes a Hugging Face `datasets.Dataset`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, IterableDataset, get_worker_info

SM_CHANNEL_TRAINING = "SM_CHANNEL_TRAINING"  # set by SageMaker to the training channel's local folder
INDEX_FILE = "index.json"


class ShardError(ValueError):
    """A token shard or its index is missing, truncated or altered; the message names the file and the fix."""


def training_data_dir(default: str | Path | None = None, explicit: str | Path | None = None) -> Path:
    """Where the training data lives, in the training program's order of precedence: `explicit` (a folder the user
    named, e.g. with `--data`), else SageMaker's training channel folder when `SM_CHANNEL_TRAINING` is set (File and
    FastFile modes both present it as a local path), else `default`. Raises ShardError if the folder is missing."""
    channel = os.environ.get(SM_CHANNEL_TRAINING)
    source = "the folder given" if explicit else f"${SM_CHANNEL_TRAINING}" if channel else "the default"
    chosen = explicit or channel or default
    if chosen is None:
        raise ShardError(f"no training data folder: name one, or set ${SM_CHANNEL_TRAINING}")
    path = Path(chosen)
    if not path.is_dir():
        raise ShardError(f"training data folder {path} (from {source}) does not exist; write the shards first")
    return path


def tokenize_dataset(dataset: Any, tokenizer: Any, eos_id: int, num_proc: int = 1, batch_size: int = 256) -> Any:
    """Add `input_ids` (each document's tokens followed by `eos_id`) to a `datasets.Dataset` with a `text` column,
    tokenizing in batches with `datasets.map` across `num_proc` processes. `tokenizer` is a transformers fast
    tokenizer (its batch call runs in Rust)."""

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [eos_id] for row in ids]}

    return dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=[c for c in dataset.column_names if c != "id"],
        desc="tokenizing",
    )


def pack(documents: Iterable[Sequence[int]], block: int) -> tuple[np.ndarray, int]:
    """Concatenate token documents (each already ending in EOS) and cut the stream into `block`-token rows.

    Returns (blocks of shape [n, block], tokens left over at the end, fewer than one block, which are dropped).
    No padding anywhere: every position of every block is a real token.
    """
    stream = np.fromiter((t for doc in documents for t in doc), dtype=np.int64)
    n = len(stream) // block
    return stream[: n * block].reshape(n, block), len(stream) - n * block


def padding_waste(lengths: Sequence[int], block: int) -> dict[str, float]:
    """What one-document-per-row loading costs at `block` tokens per row: the fraction of row positions that are
    padding, and the fraction of real tokens cut off by truncation."""
    lengths = np.asarray(lengths)
    kept = np.minimum(lengths, block)
    return {
        "padding_fraction": float(1 - kept.sum() / (len(lengths) * block)),
        "truncated_fraction": float(1 - kept.sum() / lengths.sum()),
    }


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocabularies up to 65,536), else uint32: half the disk and memory."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _whole_number(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` if it is an int (not a bool) within [low, high], else ValueError naming the argument and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"within [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


MAX_VOCAB = 2**32  # the largest vocabulary uint32 token ids can address


def write_token_shards(
    documents: Iterable[Sequence[int]], out_dir: str | Path, block: int, vocab_size: int, blocks_per_shard: int = 1024
) -> dict[str, Any]:
    """Pack token documents into `block`-token rows and write them as raw `shard-NNNNN.bin` files of at most
    `blocks_per_shard` rows, plus `index.json` (dtype, block, rows and SHA-256 per shard, documents, tokens).

    Documents may be longer than a shard: the stream simply continues in the next one. `block` and
    `blocks_per_shard` must be whole numbers of at least 1 and `vocab_size` within [1, 2**32] (else ValueError, before
    anything is written); each document must be a flat sequence of integer ids in [0, vocab_size) (else ShardError
    naming the document). Shards are written under temporary names and flushed to disk; only when every document
    has been read are they renamed into place, after removing any old `index.json`, and the new index written last
    (also by rename). So bad input or an interrupt while reading leaves the folder as it was, and a crash during the
    final renames leaves a folder without an index, which is refused, never half old and half new.
    """
    block = _whole_number("block", block, 1)
    blocks_per_shard = _whole_number("blocks_per_shard", blocks_per_shard, 1)
    vocab_size = _whole_number("vocab_size", vocab_size, 1, MAX_VOCAB)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    shard_tokens = block * blocks_per_shard
    buffer: list[np.ndarray] = []
    buffered, documents_seen, tokens_seen = 0, 0, 0
    shards: list[dict[str, Any]] = []

    def flush(tokens: np.ndarray) -> None:
        staged = out_dir / f"shard-{len(shards):05d}.tmp"
        with open(staged, "wb") as handle:
            tokens.astype(dtype).tofile(handle)
            handle.flush()
            os.fsync(handle.fileno())
        shards.append({"file": f"{staged.stem}.bin", "blocks": len(tokens) // block, "sha256": sha256_file(staged)})

    try:
        for number, doc in enumerate(documents):
            ids = _document_ids(doc, number, vocab_size)
            documents_seen, tokens_seen = documents_seen + 1, tokens_seen + len(ids)
            buffer.append(ids)
            buffered += len(ids)
            while buffered >= shard_tokens:
                stream = np.concatenate(buffer)
                flush(stream[:shard_tokens])
                buffer, buffered = [stream[shard_tokens:]], buffered - shard_tokens
        tail = np.concatenate(buffer) if buffer else np.zeros(0, dtype=np.int64)
        whole = len(tail) // block * block
        if whole:
            flush(tail[:whole])
    except BaseException:  # bad input or an interrupt: the folder keeps what it held before
        for shard in shards:
            (out_dir / shard["file"]).with_suffix(".tmp").unlink(missing_ok=True)
        raise
    index = {
        "block": block,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "documents": documents_seen,
        "tokens": tokens_seen,
        "dropped_tail_tokens": len(tail) - whole,
        "shards": shards,
        "blocks": sum(s["blocks"] for s in shards),
    }
    (out_dir / INDEX_FILE).unlink(missing_ok=True)
    for shard in shards:
        (out_dir / shard["file"]).with_suffix(".tmp").replace(out_dir / shard["file"])
    staged_index = out_dir / f"{INDEX_FILE}.tmp"
    staged_index.write_text(json.dumps(index, indent=2))
    staged_index.replace(out_dir / INDEX_FILE)
    return index


def _document_ids(doc: Sequence[int], number: int, vocab_size: int) -> np.ndarray:
    """Document `number` as int64 ids, or ShardError if it is not a flat sequence of integers in [0, vocab_size)."""
    ids = np.asarray(doc)
    if ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
        raise ShardError(
            f"document {number} is not a flat sequence of integer token ids (got {ids.dtype} with shape "
            f"{ids.shape}): pass one list of ids per document"
        )
    ids = ids.astype(np.int64, copy=False)
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise ShardError(f"document {number} has token id {bad} outside the vocabulary [0, {vocab_size})")
    return ids


REWRITE_HINT = "rewrite the folder with write_token_shards (or copy it again from where it was written)"


def _index_fields(index: Any, path: Path) -> None:
    """Raise ShardError unless `index` has the fields and types write_token_shards writes."""
    problem = None
    if not isinstance(index, dict) or not {"block", "dtype", "vocab_size", "shards", "blocks"} <= set(index):
        problem = "lacks block, dtype, vocab_size, shards or blocks"
    elif not all(isinstance(index[k], int) and index[k] >= 1 for k in ("block", "vocab_size")):
        problem = f"has block {index['block']!r} and vocab_size {index['vocab_size']!r} (need whole numbers >= 1)"
    elif not isinstance(index["shards"], list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("file"), str)
        and Path(s["file"]).name == s["file"]
        and isinstance(s.get("blocks"), int)
        and s["blocks"] >= 0
        and isinstance(s.get("sha256"), str)
        for s in index["shards"]
    ):
        problem = "has a shard entry without a plain file name, a block count or a SHA-256"
    elif index["blocks"] != sum(s["blocks"] for s in index["shards"]):
        problem = f"says {index['blocks']} blocks but its shards add up to {sum(s['blocks'] for s in index['shards'])}"
    if problem:
        raise ShardError(f"{path} {problem}: it was not written by write_token_shards or was edited; {REWRITE_HINT}")


def read_index(shard_dir: str | Path, verify_hashes: bool = False, vocab_size: int | None = None) -> dict[str, Any]:
    """Load `index.json` and run the fast checks, which read no more than two blocks per shard: the index is well
    formed; its dtype is the one `token_dtype` gives its vocabulary (uint16 up to 65,536 ids, else uint32); the
    vocabulary equals `vocab_size` when given (the model's); every shard exists with exactly the size its block count
    and dtype give; and the first and last block of every shard hold ids inside the vocabulary (a uint16 shard read
    as uint32 fails this). Any failure raises ShardError saying what is wrong and how to fix it.

    `verify_hashes=True` adds the full check of `verify_shards` (every byte against the SHA-256 in the index)."""
    shard_dir = Path(shard_dir)
    if verify_hashes:
        return verify_shards(shard_dir, vocab_size)
    path = shard_dir / INDEX_FILE
    if not path.exists():
        raise ShardError(f"{path} is missing; write shards with write_token_shards first")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardError(f"{path} is not valid JSON ({error}): cut short or edited; {REWRITE_HINT}") from None
    _index_fields(index, path)
    dtype = token_dtype(index["vocab_size"])
    if index["dtype"] != dtype.name:
        raise ShardError(
            f"{path} says dtype {index['dtype']!r}, but token ids of a {index['vocab_size']}-token "
            f"vocabulary are stored as {dtype.name}; {REWRITE_HINT}"
        )
    if vocab_size is not None and vocab_size != index["vocab_size"]:
        raise ShardError(
            f"the shards in {shard_dir} were tokenized for a vocabulary of {index['vocab_size']}, the "
            f"model has {vocab_size}: tokenize with the model's tokenizer and rewrite them"
        )
    itemsize, block = dtype.itemsize, index["block"]
    for shard in index["shards"]:
        file = shard_dir / shard["file"]
        expected = shard["blocks"] * block * itemsize
        actual = file.stat().st_size if file.exists() else -1
        if actual == -1:
            raise ShardError(f"{file} is missing (listed in {INDEX_FILE}); {REWRITE_HINT}")
        if actual != expected:
            other = "uint32" if dtype.name == "uint16" else "uint16"
            other_size = expected * np.dtype(other).itemsize // itemsize  # the same tokens stored as `other`
            cause = f"written as {other}, not {dtype.name}" if actual == other_size else "truncated or replaced"
            raise ShardError(
                f"{file} has {actual} bytes, expected {expected} ({shard['blocks']} blocks of {block} "
                f"{dtype.name} tokens): {cause}; {REWRITE_HINT}"
            )
        if shard["blocks"]:
            for offset in {0, (shard["blocks"] - 1) * block}:
                ids = np.fromfile(file, dtype=dtype, count=block, offset=offset * itemsize)
                if ids.max() >= index["vocab_size"]:
                    raise ShardError(
                        f"{file} holds token id {int(ids.max())} at token {offset + int(ids.argmax())}, "
                        f"outside the vocabulary [0, {index['vocab_size']}): written with another dtype "
                        f"or tokenizer; {REWRITE_HINT}"
                    )
    return index


def _check_shard(file: Path, shard: dict[str, Any], dtype: np.dtype, vocab_size: int) -> str | None:
    """Hash one shard and find its largest token id in the same pass; the problem found, or None."""
    digest, largest = hashlib.sha256(), 0
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):  # 4 MiB, a whole number of uint16/uint32 ids
            digest.update(chunk)
            largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
    if digest.hexdigest() != shard["sha256"]:
        return (
            f"{file} does not match its SHA-256 in {INDEX_FILE} (bytes changed since it was written: a flipped "
            f"bit, a partial copy or a file written by another program or dtype)"
        )
    if largest >= vocab_size:
        return f"{file} holds token id {largest}, outside the vocabulary [0, {vocab_size})"
    return None


def verify_shards(shard_dir: str | Path, vocab_size: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """The full check of a shard folder before training: the fast checks of `read_index`, then every shard's
    SHA-256 against the index and every token id against the vocabulary, read once, shards hashed in `workers`
    threads (default: one per CPU, at most 8; hashlib and numpy release the GIL). Returns the index; raises ShardError
    naming the first bad shard and the fix.

    Cost (benchmarks/shard_verification.py, 2 CPU cores shared with other jobs, page cache warm): the course's
    Shakespeare shards (5.7 MB) take 27 ms, 0.01% of a 20-step smoke run of the training program (261 s there); a
    synthetic 268 MB set takes 0.68 s (0.4 GB/s, about 14x plain reading), 0.26%. So the full check is cheap enough to
    run at every start of a training run, well under a few percent of even a short one; only data of tens of GB and
    more, checked once after writing or copying it, warrants skipping it at start (the fast checks of `read_index`
    still run on every open, in milliseconds).
    """
    shard_dir = Path(shard_dir)
    index = read_index(shard_dir, vocab_size=vocab_size)
    dtype = np.dtype(index["dtype"])
    files = [(shard_dir / shard["file"], shard) for shard in index["shards"]]
    workers = workers or min(8, os.cpu_count() or 1, max(len(files), 1))
    with ThreadPoolExecutor(workers) as pool:
        for problem in pool.map(lambda item: _check_shard(*item, dtype, index["vocab_size"]), files):
            if problem:
                raise ShardError(f"{problem}; {REWRITE_HINT}")
    return index


class PackedBlocks(Dataset):
    """Map-style dataset of the packed blocks in a shard folder: item i is block i as a LongTensor of `block`
    tokens. Shards are memory-mapped (read lazily, page by page), so the data may be far larger than RAM, and the
    maps are opened in whichever process (DataLoader worker) first reads them.

    Opening runs `read_index`'s fast checks (sizes, dtype, vocabulary; `vocab_size` is the model's, when known);
    `verify_hashes=True` runs the full `verify_shards` check (every byte against its SHA-256) as well."""

    def __init__(self, shard_dir: str | Path, verify_hashes: bool = False, vocab_size: int | None = None) -> None:
        self.shard_dir = Path(shard_dir)
        self.index = read_index(self.shard_dir, verify_hashes, vocab_size)
        self.block = int(self.index["block"])
        self.starts = np.cumsum([0] + [s["blocks"] for s in self.index["shards"]]).tolist()
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _shard_maps(self) -> list[np.memmap]:
        if self._maps is None:
            dtype = np.dtype(self.index["dtype"])
            self._maps = [
                np.memmap(self.shard_dir / s["file"], dtype=dtype, mode="r").reshape(-1, self.block)
                for s in self.index["shards"]
            ]
        return self._maps

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self.starts, i) - 1
        return torch.from_numpy(self._shard_maps()[shard][i - self.starts[shard]].astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_maps": None}  # workers reopen the maps instead of pickling them


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (each rank gets a disjoint 1/world share of a per-epoch permutation, seeded by
    seed + epoch) that can start part-way through an epoch: after `resume(epoch, samples_done)` the first
    `samples_done` indices of this rank's order are skipped, so a restarted job sees exactly the batches the
    interrupted one would have seen next. A dataset too small to give every rank at least one sample is refused
    (ValueError with the numbers): a rank with nothing to read would leave the others waiting forever."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        num_replicas = _whole_number("num_replicas", num_replicas, 1)
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=_whole_number("rank", rank, 0, num_replicas - 1),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        if self.num_samples == 0:
            raise ValueError(
                f"{len(dataset)} samples cannot be shared by {num_replicas} ranks: each rank would get "
                "none and training would wait forever; write more data or use fewer ranks"
            )
        self.skip = 0

    def resume(self, epoch: int, samples_done: int) -> None:
        """Position the sampler `samples_done` samples into `epoch` (per rank)."""
        _whole_number("epoch", epoch, 0)
        if not 0 <= samples_done <= self.num_samples:
            raise ValueError(f"samples_done must be within [0, {self.num_samples}], got {samples_done}")
        self.set_epoch(epoch)
        self.skip = samples_done

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        return iter(order[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class StreamingBlocks(IterableDataset):
    """Iterable dataset that streams blocks shard by shard, for data read once in order (object storage, Pipe mode)
    rather than randomly accessed. Each epoch visits the shards in a seeded order and shuffles blocks within a
    shard; block k of that order goes to global reader k mod (ranks x workers), readers numbered worker by worker
    (reader w x ranks + r is worker w of rank r), so ranks and their DataLoader workers read disjoint blocks that
    together cover the epoch. Every rank reads the same number of blocks (the last blocks % ranks of the epoch's order
    are left out, as DistributedSampler's drop_last does), since a rank that runs out first would leave the others
    waiting at their next collective; fewer blocks than ranks is refused. Opening checks the shards as `PackedBlocks`
    does."""

    def __init__(
        self,
        shard_dir: str | Path,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        verify_hashes: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        world_size = _whole_number("world_size", world_size, 1)
        self.rank = _whole_number("rank", rank, 0, world_size - 1)
        self.world_size, self.seed, self.epoch = world_size, seed, 0
        self.blocks = PackedBlocks(shard_dir, verify_hashes, vocab_size)
        if len(self.blocks) < world_size:
            raise ValueError(
                f"{shard_dir} holds {len(self.blocks)} blocks, fewer than the {world_size} ranks: a "
                "rank with none would leave the others waiting forever; write more data or use fewer "
                "ranks"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _whole_number("epoch", epoch, 0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        readers, me = self.world_size * workers, worker_id * self.world_size + self.rank
        last = len(self.blocks) // self.world_size * self.world_size  # positions k < last are read, evenly per rank
        rng = np.random.default_rng((self.seed, self.epoch))
        k = 0
        for shard in rng.permutation(len(self.blocks.starts) - 1):
            start, stop = self.blocks.starts[shard], self.blocks.starts[shard + 1]
            for i in rng.permutation(np.arange(start, stop)):
                if k < last and k % readers == me:
                    yield self.blocks[int(i)]
                k += 1


def causal_lm_batch(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate packed blocks for a transformers causal LM: labels are the inputs (the model shifts them)."""
    x = torch.stack(blocks)
    return {"input_ids": x, "labels": x}


def steps_per_epoch(blocks: int, world_size: int, batch_size: int) -> int:
    """Optimizer steps in one epoch when each of `world_size` ranks takes `batch_size` blocks per step."""
    return math.floor(blocks / world_size) // batch_size


IMAGES_FILE = "images.npz"


def write_image_arrays(out_dir: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Save images (N, C, H, W) and integer labels as `images.npz`: a training channel for the vision model."""
    if images.ndim != 4 or len(images) != len(labels):
        raise ShardError(f"need images (N, C, H, W) and N labels, got {images.shape} and {len(labels)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / IMAGES_FILE, images=images.astype(np.float32), labels=labels.astype(np.int64))
    return out_dir / IMAGES_FILE


def read_image_arrays(folder: str | Path, augment: bool = True, seed: int = 0) -> AugmentedImages:
    """The images a folder's `images.npz` holds, as an `AugmentedImages` dataset."""
    path = Path(folder) / IMAGES_FILE
    if not path.exists():
        raise ShardError(f"{path} is missing; write it with write_image_arrays")
    with np.load(path) as arrays:
        return AugmentedImages(
            torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), augment, seed=seed
        )


def image_batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate (image, label) pairs for a transformers image classifier."""
    return {"pixel_values": torch.stack([image for image, _ in items]), "labels": torch.stack([y for _, y in items])}


class AugmentedImages(Dataset):
    """Images (N, C, H, W) with labels; with `augment`, each read applies a random shift of up to `shift` pixels
    and a rotation of up to `degrees`, drawn from a generator seeded by (seed, epoch, index), so augmentation is
    different every epoch yet reproducible. Written with torch's affine_grid/grid_sample because torchvision's
    wheels do not run beside this course's CPU build of torch."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: bool = True,
        shift: float = 1.0,
        degrees: float = 15.0,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need images (N, C, H, W) and N labels, got {tuple(images.shape)} and {len(labels)}")
        self.images, self.labels, self.augment = images.float(), labels, augment
        self.shift, self.degrees, self.seed, self.epoch = shift, degrees, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.augment:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) % 2**63)
            angle = math.radians(float(torch.empty(1).uniform_(-self.degrees, self.degrees, generator=g)))
            h, w = image.shape[-2:]
            dx, dy = (torch.empty(2).uniform_(-self.shift, self.shift, generator=g) * 2 / torch.tensor([w, h])).tolist()
            theta = torch.tensor([[math.cos(angle), -math.sin(angle), dx], [math.sin(angle), math.cos(angle), dy]])
            grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
            image = F.grid_sample(image[None], grid, align_corners=False, padding_mode="zeros")[0]
        return image, self.labels[i]


def write_text_shards(
    texts: Sequence[str],
    tokenizer: Any,
    out_dir: str | Path,
    block: int,
    vocab_size: int | None = None,
    blocks_per_shard: int = 1024,
) -> dict[str, Any]:
    """Tokenize `texts` with a transformers tokenizer (one batched call, no special tokens added), end each with the
    tokenizer's EOS token and write them as packed token shards (`write_token_shards`); returns the index.

    `vocab_size` defaults to `len(tokenizer)`; pass the model's vocabulary when it is larger. Notebooks 04, 05, 08
    and 09 and the benchmarks build their training data with it (book chapters 4 to 9)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: set tokenizer.eos_token, documents are separated by it")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    documents = [row + [tokenizer.eos_token_id] for row in ids]
    return write_token_shards(documents, out_dir, block, vocab_size or len(tokenizer), blocks_per_shard)
