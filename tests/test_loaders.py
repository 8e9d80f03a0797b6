import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from utils import loaders as L


def documents(count: int = 40, seed: int = 0, vocab: int = 500, eos: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, rng.integers(5, 120)).tolist() + [eos] for _ in range(count)]


def test_pack_round_trips_the_token_stream():
    docs = documents()
    blocks, leftover = L.pack(docs, block=16)
    stream = [t for d in docs for t in d]
    assert blocks.shape == (len(stream) // 16, 16) and leftover == len(stream) % 16
    assert blocks.reshape(-1).tolist() == stream[: blocks.size]


def test_padding_waste():
    waste = L.padding_waste([2, 4, 8], block=4)
    assert waste["padding_fraction"] == pytest.approx(2 / 12)  # rows hold 2 + 4 + 4 real tokens of 12 slots
    assert waste["truncated_fraction"] == pytest.approx(4 / 14)


def test_shards_round_trip_including_a_document_longer_than_a_shard(tmp_path):
    docs = documents() + [list(range(1, 400)) + [0]]  # 400 tokens, more than one 4 x 16 = 64-token shard
    index = L.write_token_shards(docs, tmp_path, block=16, vocab_size=500, blocks_per_shard=4)
    stream = [t for d in docs for t in d]
    assert index["tokens"] == len(stream) and index["documents"] == len(docs)
    assert index["blocks"] * 16 + index["dropped_tail_tokens"] == len(stream)
    assert index["dtype"] == "uint16" and len(index["shards"]) == -(-index["blocks"] // 4)
    dataset = L.PackedBlocks(tmp_path, verify_hashes=True)
    assert torch.cat([dataset[i] for i in range(len(dataset))]).tolist() == stream[: index["blocks"] * 16]
    assert not list(tmp_path.glob("*.tmp"))


def test_large_vocabularies_use_uint32():
    assert L.token_dtype(65_536) == np.uint16 and L.token_dtype(65_537) == np.uint32


def test_token_beyond_the_vocabulary_is_rejected(tmp_path):
    with pytest.raises(L.ShardError, match="document 1 has token id 500"):
        L.write_token_shards([[1, 2], [3, 500]], tmp_path, block=2, vocab_size=500)


def test_truncated_and_corrupt_shards_are_detected(tmp_path):
    L.write_token_shards(documents(), tmp_path, block=16, vocab_size=500, blocks_per_shard=4)
    shard = tmp_path / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    L.PackedBlocks(tmp_path)  # same size: only the hash check can tell
    with pytest.raises(L.ShardError, match="shard-00001.bin does not match"):
        L.PackedBlocks(tmp_path, verify_hashes=True)
    shard.write_bytes(bytes(data[:-3]))
    with pytest.raises(L.ShardError, match="truncated"):
        L.PackedBlocks(tmp_path)
    (tmp_path / "index.json").unlink()
    with pytest.raises(L.ShardError, match="write_token_shards"):
        L.PackedBlocks(tmp_path)


def _seen_blocks(dataset, world: int, workers: int, epoch: int = 0) -> list[list[int]]:
    """First token of every block each rank reads through a DataLoader with `workers` processes."""
    seen = []
    for rank in range(world):
        sampler = L.ResumableDistributedSampler(dataset, num_replicas=world, rank=rank, seed=3)
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=L.causal_lm_batch)
        seen.append([int(i) for batch in loader for i in batch["input_ids"][:, 0]])
    return seen


@pytest.fixture
def numbered_blocks(tmp_path):
    """Shards whose block i starts with token i, so a block's identity can be read off its first token."""
    docs = [[i] + [0] * 7 for i in range(64)]
    L.write_token_shards(docs, tmp_path, block=8, vocab_size=100, blocks_per_shard=10)
    return L.PackedBlocks(tmp_path)


def test_two_ranks_two_workers_cover_every_block_exactly_once(numbered_blocks):
    seen = _seen_blocks(numbered_blocks, world=2, workers=2)
    assert sorted(seen[0] + seen[1]) == list(range(64)) and not set(seen[0]) & set(seen[1])
    next_epoch = _seen_blocks(numbered_blocks, world=2, workers=0, epoch=1)
    assert sorted(next_epoch[0] + next_epoch[1]) == list(range(64)) and next_epoch != seen


def test_resume_yields_the_same_following_batches(numbered_blocks):
    full = L.ResumableDistributedSampler(numbered_blocks, num_replicas=2, rank=1, seed=5)
    full.set_epoch(2)
    order = list(full)
    resumed = L.ResumableDistributedSampler(numbered_blocks, num_replicas=2, rank=1, seed=5)
    resumed.resume(epoch=2, samples_done=12)
    assert list(resumed) == order[12:] and len(resumed) == len(order) - 12
    with pytest.raises(ValueError):
        resumed.resume(epoch=2, samples_done=1000)


def test_streaming_blocks_are_disjoint_and_complete(numbered_blocks, tmp_path):
    readers = []
    for rank in range(2):
        stream = L.StreamingBlocks(numbered_blocks.shard_dir, rank=rank, world_size=2, seed=1)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        readers.append([int(block[0]) for block in loader])
    assert sorted(readers[0] + readers[1]) == list(range(64)) and not set(readers[0]) & set(readers[1])


def test_training_data_dir_follows_the_sagemaker_channel(tmp_path, monkeypatch):
    monkeypatch.delenv(L.SM_CHANNEL_TRAINING, raising=False)
    assert L.training_data_dir(tmp_path) == tmp_path
    channel = tmp_path / "channel"
    channel.mkdir()
    monkeypatch.setenv(L.SM_CHANNEL_TRAINING, str(channel))
    assert L.training_data_dir("/elsewhere") == channel
    monkeypatch.setenv(L.SM_CHANNEL_TRAINING, str(tmp_path / "missing"))
    with pytest.raises(L.ShardError, match="SM_CHANNEL_TRAINING"):
        L.training_data_dir(tmp_path)


def test_tokenize_dataset_appends_eos():
    from datasets import Dataset

    from utils.bpe import EOS, as_transformers_tokenizer, train_bpe

    texts = ["to be or not to be", "that is the question"] * 20
    tokenizer = as_transformers_tokenizer(train_bpe(texts, vocab_size=300))
    eos = tokenizer.convert_tokens_to_ids(EOS)
    out = L.tokenize_dataset(Dataset.from_dict({"id": ["a", "b"], "text": texts[:2]}), tokenizer, eos)
    assert out.column_names == ["id", "input_ids"]
    assert out[0]["input_ids"][-1] == eos and tokenizer.decode(out[0]["input_ids"][:-1]).strip() == texts[0]


def test_augmented_images_are_reproducible_and_differ_by_epoch():
    images, labels = torch.rand(4, 1, 8, 8), torch.arange(4)
    data = L.AugmentedImages(images, labels, seed=0)
    first = data[1][0]
    assert torch.equal(first, data[1][0]) and first.shape == (1, 8, 8)
    data.set_epoch(1)
    assert not torch.equal(first, data[1][0])
    assert torch.equal(L.AugmentedImages(images, labels, augment=False)[1][0], images[1])
    with pytest.raises(ValueError):
        L.AugmentedImages(images[0], labels)


def test_steps_per_epoch():
    assert L.steps_per_epoch(blocks=1000, world_size=2, batch_size=16) == 31
    assert json.dumps(L.padding_waste([4], 4))  # plain floats, ready for a manifest
