import json
import random

import numpy as np
import pytest

from utils import corpus as C


def test_read_text_files_skips_empty_and_non_utf8_and_reconciles(tmp_path):
    (tmp_path / "good.txt").write_text("To be, or not to be.")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    paths = sorted(tmp_path.iterdir())
    docs, skipped = C.read_text_files(paths, "test")
    assert [d["id"] for d in docs] == ["good"]
    assert {s["reason"].split(" ")[0] for s in skipped} == {"empty", "not"}
    assert len(docs) + len(skipped) == len(paths)


def test_strip_gutenberg_keeps_only_the_body():
    raw = "The Project Gutenberg eBook\nlicence\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nACT I\n"
    raw += "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence"
    assert C.strip_gutenberg(raw) == "ACT I"
    assert C.strip_gutenberg("no markers") == "no markers"


def test_normalize_text():
    assert C.normalize_text("\ufb01ne  \r\n\r\n\r\n\tend  ") == "fine\n\n    end"


def test_strip_markup_keeps_words():
    text = "Use :class:`~datasets.Dataset` or ``map``::\n\n>>> ds.map(f)\n... more\n.. note::\nSee `docs`_ <b>now</b>"
    assert C.strip_markup(text) == "Use datasets.Dataset or map:\n\nSee docs now"


def test_boilerplate_lines_are_removed_and_counted():
    text, removed = C.remove_boilerplate_lines("Copyright 2020 ACME\nReal content.\nAll rights reserved.")
    assert text == "Real content." and removed == 2


@pytest.mark.parametrize(
    ("name", "text", "kept"),
    [
        ("word count", "the cat and the dog", False),
        ("symbol-to-word ratio", "the and of to # " * 20 + "# # # # # # # # # # # # # # # # # # # # # # #", False),
        ("alphabetic words", "the and of " + "123 456 789 " * 20, False),
        ("stop words", "apples oranges " * 40, False),
        (
            "duplicate lines",
            "\n".join(["the same line of text"] * 40 + [f"line {i} of the play" for i in 10 * "ab"]),
            False,
        ),
        ("word count", " ".join(["the cat sat on the mat with a dog and to be of that have"] * 10), True),
    ],
)
def test_gopher_filters(name, text, kept):
    rule = next(f for f in C.gopher_filters() if f.name == name)
    assert rule.keeps(text) is kept


def prose(words: int, seed: int = 0) -> str:
    """Varied English-like text: random letter words with stop words mixed in."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghiklmnoprstuwy", k=rng.randint(3, 8))) for _ in range(500)]
    return " ".join(rng.choice(["the", "and", "of", "to"] if rng.random() < 0.3 else vocabulary) for _ in range(words))


def test_apply_filters_charges_each_document_once():
    docs = [{"id": str(i), "domain": "d", "text": t} for i, t in enumerate(["short", prose(200), "# " * 80])]
    report = C.apply_filters(docs, C.gopher_filters())
    assert sum(report.counts().values()) == 3
    assert report.counts()["kept"] == 1 and report.counts()["word count"] == 1


def test_exact_duplicates_ignore_case_and_spacing():
    docs = [{"id": "a", "text": "Hello  World"}, {"id": "b", "text": "hello world\n"}, {"id": "c", "text": "other"}]
    assert C.exact_duplicate_groups(docs) == [["a", "b"]]


def test_minhash_finds_planted_near_duplicates_with_high_precision_and_recall():
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghiklmnopqrstwxyz", k=6)) for _ in range(5000)]
    docs = [{"id": f"d{i}", "text": " ".join(rng.choices(words, k=300))} for i in range(60)]
    truth = []
    for i in range(0, 60, 3):
        docs.append({"id": f"copy{i}", "text": C.perturb(docs[i]["text"], 0.05, rng)})
        truth.append((f"d{i}", f"copy{i}"))
    found = C.near_duplicate_pairs(docs, threshold=0.5, size=3)
    scores = C.pair_precision_recall(found, truth)
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0


def test_shingles_merge_early_modern_spelling():
    assert C.shingles("giue vp iust", 1) == C.shingles("giue up just", 1)
    assert C.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)


def test_connected_groups():
    groups = C.connected_groups([("b", "c"), ("c", "d")], ["a", "b", "c", "d"])
    assert groups == {"a": "a", "b": "b", "c": "b", "d": "b"}


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Mail ann.lee@example.co.uk now", ["EMAIL"]),
        ("Call +1 415-555-0199 today", ["PHONE"]),
        ("Call (212) 555-0123 today", ["PHONE"]),
        ("Server 192.168.0.12 is down", ["IP_ADDRESS"]),
        ("Card 4111 1111 1111 1111 on file", ["CREDIT_CARD"]),
        ("Card 4111111111111112 is not valid", []),  # fails the Luhn check
        ("Version 2.13.0 released 2026-11-22 at 10:30", []),
        ("Not an address 999.1.1.1", []),
    ],
)
def test_find_pii(text, kinds):
    assert [k for k, _, _ in C.find_pii(text)] == kinds


def test_scrub_pii_replaces_with_placeholders():
    text, counts = C.scrub_pii("Write to a@b.org or 10.0.0.1, a@b.org")
    assert text == "Write to <EMAIL> or <IP_ADDRESS>, <EMAIL>" and counts == {"EMAIL": 2, "IP_ADDRESS": 1}


def test_pii_report_scores_caught_partial_missed_and_false_positives():
    cases = [
        ("Mail ann@example.org now", [("EMAIL", "ann@example.org")]),
        ("Call +1 (202) 555-0178 now", [("PHONE", "+1 (202) 555-0178")]),  # found without its country code
        ("Call 202 555 0143 now", [("PHONE", "202 555 0143")]),  # spaces: no pattern for it
        ("Version 1.2.3.4 is out", []),  # an IPv4-shaped version number
    ]
    report = C.pii_detection_report(cases)
    assert report["per_kind"]["EMAIL"] == {"true": 1, "caught": 1, "partly": 0, "missed": 0}
    assert report["per_kind"]["PHONE"] == {"true": 2, "caught": 0, "partly": 1, "missed": 1}
    assert report["recall"] == pytest.approx(1 / 3)
    assert report["precision"] == pytest.approx(2 / 3)  # email and partial phone spans are on true values
    assert report["false_positives"] == [("IP_ADDRESS", "1.2.3.4", "Version 1.2.3.4 is out")]
    with pytest.raises(C.CorpusError, match="does not occur"):
        C.pii_detection_report([("no value here", [("EMAIL", "a@b.org")])])


def test_pii_test_set_is_labelled_consistently_and_the_regexes_miss_kinds_they_lack():
    kinds = {kind for _, truths in C.PII_TEST_SET for kind, _ in truths}
    assert {"EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD"} <= kinds and kinds - set(C.PII_PATTERNS)
    report = C.pii_detection_report(C.PII_TEST_SET)
    for kind in kinds - set(C.PII_PATTERNS):  # no pattern, so nothing of that kind can be caught
        assert report["per_kind"][kind]["caught"] == 0
    assert 0 < report["recall"] < 1 and 0 < report["precision"] <= 1


def test_term_lists_keep_each_axis_separate():
    seen = [term for terms in C.TERM_LISTS.values() for term in terms]
    assert len(seen) == len(set(seen)), "a term counted under two axes"
    assert "moor" in C.TERM_LISTS["ethnicity"] and "moor" not in C.TERM_LISTS["religion"]


def test_concordance_shows_each_whole_word_hit_in_context():
    lines = C.concordance(["The Moor spoke. Moorland is not a hit.", "a moor"], ["moor"], width=4, limit=5)
    assert lines == ["The [Moor] spo", "  a [moor]"]
    assert len(C.concordance(["moor " * 10], ["moor"], limit=3)) == 3


def test_term_rates():
    rates = C.term_rates(["She and her sister met the king.", "He left."])
    assert rates["words"] == 9 and rates["female"] == pytest.approx(1e4 * 3 / 9)
    assert rates["male"] == pytest.approx(1e4 * 2 / 9)


def test_split_of_is_deterministic_and_proportional():
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    splits = [C.split_of(f"doc{i}", fractions) for i in range(5000)]
    assert splits == [C.split_of(f"doc{i}", fractions) for i in range(5000)]
    assert abs(splits.count("train") / 5000 - 0.8) < 0.03
    with pytest.raises(C.CorpusError):
        C.split_of("x", {"train": 0.5})


def test_save_and_verify_corpus(tmp_path):
    from datasets import load_from_disk

    splits = {
        "train": [{"id": f"t{i}", "domain": "d", "text": f"text {i}"} for i in range(5)],
        "test": [{"id": "x", "domain": "d", "text": "held out"}],
    }
    manifest = C.save_corpus(splits, tmp_path, {"min_words": 50}, shard_documents=2)
    assert len(manifest["splits"]["train"]["shards"]) == 3
    assert load_from_disk(str(tmp_path / "arrow"))["train"].num_rows == 5
    lines = (tmp_path / "jsonl" / "train-00000.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"id": "t0", "domain": "d", "text": "text 0"}
    assert C.verify_corpus(tmp_path)["settings"] == {"min_words": 50}
    with open(tmp_path / "jsonl" / "train-00001.jsonl", "a") as handle:
        handle.write("tampered\n")
    with pytest.raises(C.CorpusError, match="train-00001"):
        C.verify_corpus(tmp_path)


def test_caption_digit():
    image = np.zeros((8, 8))
    image[1:7, 3:5] = 16
    assert C.caption_digit(image, 1) == "a thin, upright handwritten digit 1"


def test_installed_docstrings_and_licences():
    docs = C.installed_docstrings(["tqdm"])
    assert len(docs) > 20 and all(d["text"] and d["domain"] == "software" for d in docs)
    assert any("MIT" in d["text"] or "Apache" in d["text"] for d in C.installed_licences())
    with pytest.raises(C.CorpusError, match="not installed"):
        C.installed_docstrings(["no_such_package_xyz"])


@pytest.mark.parametrize(
    "text",
    [
        "Journal 71(2) (1999) 161-190",
        "[[174 201 231]\n [173 200 230]]",
        "labels: [1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0]",
        "Clause 252.227-7013 (c)",
    ],
)
def test_no_pii_in_real_false_positives_seen_in_docstrings(text):
    assert C.find_pii(text) == []


def test_build_corpus_reconciles_and_keeps_near_duplicates_in_one_split():
    base = prose(300, 1)
    docs = [
        {"id": "a", "domain": "x", "text": base},
        {"id": "b", "domain": "x", "text": base + " extra words"},
        {"id": "c", "domain": "x", "text": base.upper()},
        {"id": "d", "domain": "x", "text": "too short"},
        {"id": "e", "domain": "y", "text": prose(300, 2) + " mail me at a@b.org"},
    ]
    splits, report = C.build_corpus(docs, C.gopher_filters(), {"x": 0.8, "y": 0.8})
    assert report["removed_by_filter"]["word count"] == 1 and report["exact_duplicates_removed"] == 1
    assert report["near_duplicate_pairs"] == 1 and report["pii_replaced"] == {"EMAIL": 1}
    (split_of_a,) = [name for name, ds in splits.items() if any(d["id"] == "a" for d in ds)]
    assert any(d["id"] == "b" for d in splits[split_of_a])
    with pytest.raises(C.CorpusError, match="unique"):
        C.build_corpus(docs + docs[:1], C.gopher_filters(), {"x": 0.8, "y": 0.8})
    with pytest.raises(C.CorpusError, match="no threshold"):
        C.build_corpus(docs, C.gopher_filters(), {"x": 0.8})
    with pytest.raises(C.CorpusError, match="without a threshold"):
        C.build_corpus(docs, C.gopher_filters(), {"x": 0.8, "y": 0.8}, remove_near=["z"])


def test_build_corpus_can_remove_near_duplicates_and_still_reconciles():
    base = prose(300, 1)
    docs = [
        {"id": "a", "domain": "x", "text": base},
        {"id": "b", "domain": "x", "text": base + " extra words"},
        {"id": "e", "domain": "y", "text": prose(300, 2)},
    ]
    splits, report = C.build_corpus(docs, C.gopher_filters(), {"x": 0.8, "y": 0.8}, remove_near=["x"])
    kept = sorted(d["id"] for ds in splits.values() for d in ds)
    assert kept == ["a", "e"] and report["near_duplicates_removed"] == 1 and report["near_duplicate_pairs"] == 0


def test_remove_near_duplicates_keeps_the_first_copy_and_does_not_follow_chains():
    docs = [{"id": i} for i in "abcd"]
    kept, removed = C.remove_near_duplicates(docs, [("a", "b"), ("b", "c")])
    assert [d["id"] for d in kept] == ["a", "c", "d"] and removed == [{"id": "b", "duplicate_of": "a"}]
    kept, removed = C.remove_near_duplicates(docs, [("c", "a"), ("b", "a")])
    assert [d["id"] for d in kept] == ["a", "d"]
