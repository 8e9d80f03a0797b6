"""Turning raw text into a clean, measured pretraining corpus: read, clean, filter, deduplicate, scrub, split, save.

Defined for notebook 03 (book chapter 2, dataset preparation). Documents are plain dicts with at least `id`,
`domain` and `text`. Every step reports what it removed, so counts reconcile: documents in = kept + removed by each
step. Needs numpy, datasketch (MinHash LSH) and, for `save_corpus`, datasets.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

Document = dict[str, Any]
WORD = re.compile(r"\S+")


class CorpusError(ValueError):
    """A file or document cannot be used; the message names it and says why."""


# ---------------------------------------------------------------------------------------------------- reading


def read_text_files(paths: Iterable[Path], domain: str) -> tuple[list[Document], list[dict[str, str]]]:
    """Read UTF-8 text files as documents; empty or undecodable files are skipped and returned with the reason.

    Returns (documents, skipped); every path lands in exactly one of the two.
    """
    documents, skipped = [], []
    for path in paths:
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            skipped.append({"path": str(path), "reason": f"not UTF-8 (bad byte at offset {error.start})"})
            continue
        if not text.strip():
            skipped.append({"path": str(path), "reason": "empty"})
            continue
        documents.append({"id": Path(path).stem, "domain": domain, "source": str(path), "text": text})
    return documents, skipped


def installed_docstrings(packages: Iterable[str], domain: str = "software") -> list[Document]:
    """Module, class and function docstrings of installed packages, one document each, read with `ast` (nothing
    is imported). A second domain for the course corpus, built from what `pip` installed."""
    documents = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise CorpusError(f"package {package!r} is not installed; pick one from `pip list`")
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # generated or vendored files that are not valid Python 3 source
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        name = getattr(node, "name", "<module>")
                        relative = path.relative_to(root.parent).as_posix()
                        documents.append({"id": f"{relative}:{name}:{node.lineno if name != '<module>' else 0}",
                                          "domain": domain, "source": relative, "text": doc})  # fmt: skip
    return documents


def installed_licences(domain: str = "software") -> list[Document]:
    """The licence files every installed distribution ships (`*.dist-info/licenses/*`, `LICENSE*`), one document
    each: real boilerplate, and many exact copies of the same few licences."""
    documents, names = [], set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        if dist.metadata["Name"].lower() in names:  # found twice on sys.path: the first copy is the one imported
            continue
        names.add(dist.metadata["Name"].lower())
        for file in dist.files or []:
            name = Path(str(file)).name.upper()
            if name.startswith(("LICENSE", "LICENCE", "COPYING")) and not name.endswith((".PY", ".PYC")):
                path = Path(dist.locate_file(file))
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                documents.append({"id": f"{dist.metadata['Name']}:{file}", "domain": domain,
                                  "source": str(file), "text": text})  # fmt: skip
    return documents


# ---------------------------------------------------------------------------------------------------- cleaning

GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's `*** START OF ...` and `*** END OF ...` lines (licence header and
    footer removed); text without the markers is returned unchanged."""
    start, end = GUTENBERG_START.search(text), GUTENBERG_END.search(text)
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    return body.strip("\n") if (start or end) else text


def normalize_text(text: str) -> str:
    """Unicode NFKC (ligatures and full-width forms to plain letters), `\\r\\n` to `\\n`, tabs to spaces, trailing
    spaces removed, runs of blank lines cut to one, no blank lines at either end."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


MARKUP_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^[ \t]*(>>>|\.\.\.)( .*)?$\n?", re.MULTILINE), ""),  # doctest prompts and their continuation
    (re.compile(r"^[ \t]*\.\. [\w:-]+::.*$\n?", re.MULTILINE), ""),  # reST directives (.. note::, .. code-block::)
    (re.compile(r":[\w:]+:`~?([^`<]*?)(?: <[^>]*>)?`"), r"\1"),  # reST roles :class:`~a.B` -> a.B
    (re.compile(r"``([^`]*)``"), r"\1"),  # reST literals
    (re.compile(r"`([^`]*)`_?"), r"\1"),  # markdown code and reST links
    (re.compile(r"</?[a-zA-Z][^>]*>"), ""),  # HTML tags
    (re.compile(r"^[ \t]*[-=~^]{3,}[ \t]*$\n?", re.MULTILINE), ""),  # heading underlines
    (re.compile(r"::$", re.MULTILINE), ":"),  # reST literal-block markers
]


def strip_markup(text: str) -> str:
    """Remove reST/markdown/HTML markup and doctest lines, keeping the words (rules in `MARKUP_RULES`)."""
    for pattern, replacement in MARKUP_RULES:
        text = pattern.sub(replacement, text)
    return text


BOILERPLATE_LINE = re.compile(
    r"(all rights reserved|licensed under|license(d)? (is|are)? ?distributed|without warranties|warranty|"
    r"copyright \(c\)|copyright \d{4}|permission is hereby granted|redistribution and use|"
    r"terms and conditions|cookie policy|javascript)",
    re.IGNORECASE,
)


def remove_boilerplate_lines(text: str) -> tuple[str, int]:
    """Drop lines with licence or web boilerplate phrases, as C4 drops lines mentioning javascript or cookie
    policies (Raffel et al. 2020, section 2.2). Returns (text, lines removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if BOILERPLATE_LINE.search(line):
            removed += 1
        else:
            kept.append(line)
    return "\n".join(kept), removed


def clean_document(text: str) -> str:
    """The cleaning chain used by the course: Gutenberg markers, markup, boilerplate lines, normalisation."""
    text = strip_markup(strip_gutenberg(text))
    return normalize_text(remove_boilerplate_lines(text)[0])


# ---------------------------------------------------------------------------------------------------- quality

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher (Rae et al. 2021, appendix A.1.1)


def word_count(text: str) -> float:
    return float(len(WORD.findall(text)))


def mean_word_length(text: str) -> float:
    words = WORD.findall(text)
    return sum(len(w) for w in words) / len(words) if words else 0.0


def symbol_to_word_ratio(text: str) -> float:
    """Hash symbols and ellipses per word (Gopher removes documents above 0.1)."""
    words = max(len(WORD.findall(text)), 1)
    return (text.count("#") + text.count("...") + text.count("\u2026")) / words


def alphabetic_word_fraction(text: str) -> float:
    """Fraction of words with at least one letter (Gopher keeps documents at or above 0.8)."""
    words = WORD.findall(text)
    return sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0


def stop_word_count(text: str) -> float:
    """How many of Gopher's eight stop words occur at least once (Gopher requires 2)."""
    present = {w.lower().strip(".,;:!?'\"") for w in WORD.findall(text)}
    return float(sum(w in present for w in STOP_WORDS))


def duplicate_line_fraction(text: str) -> float:
    """Fraction of non-empty lines that repeat an earlier line (Gopher removes documents above 0.3)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def top_bigram_fraction(text: str) -> float:
    """Share of characters covered by the most frequent word bigram (Gopher removes documents above 0.2)."""
    words = WORD.findall(text.lower())
    if len(words) < 2:
        return 0.0
    (first, second), count = Counter(zip(words, words[1:], strict=False)).most_common(1)[0]
    return count * (len(first) + len(second)) / max(sum(len(w) for w in words), 1)


@dataclass(frozen=True)
class QualityFilter:
    """Keep a document when `low <= measure(text) <= high`; `source` says where the thresholds come from."""

    name: str
    measure: Callable[[str], float]
    low: float = float("-inf")
    high: float = float("inf")
    source: str = ""

    def keeps(self, text: str) -> bool:
        return self.low <= self.measure(text) <= self.high


def gopher_filters(min_words: int = 50, max_duplicate_lines: float = 0.3) -> list[QualityFilter]:
    """Gopher's heuristic quality rules (Rae et al. 2021, appendix A.1.1) with the two knobs the course tunes."""
    gopher = "Gopher (Rae et al. 2021, A.1.1)"
    return [
        QualityFilter("word count", word_count, min_words, 100_000, gopher),
        QualityFilter("mean word length", mean_word_length, 3, 10, gopher),
        QualityFilter("symbol-to-word ratio", symbol_to_word_ratio, high=0.1, source=gopher),
        QualityFilter("alphabetic words", alphabetic_word_fraction, low=0.8, source=gopher),
        QualityFilter("stop words", stop_word_count, low=2, source=gopher),
        QualityFilter("duplicate lines", duplicate_line_fraction, high=max_duplicate_lines, source=gopher),
        QualityFilter("top bigram share", top_bigram_fraction, high=0.2, source=gopher),
    ]


@dataclass
class FilterReport:
    """Documents kept, and those removed by each filter (each document is charged to the first rule it fails)."""

    kept: list[Document]
    removed: dict[str, list[Document]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"kept": len(self.kept)} | {name: len(docs) for name, docs in self.removed.items()}


def apply_filters(documents: list[Document], filters: list[QualityFilter]) -> FilterReport:
    """Run `filters` in order; documents in = kept + sum of removed (checked before returning)."""
    report = FilterReport(kept=[], removed={f.name: [] for f in filters})
    for doc in documents:
        failed = next((f for f in filters if not f.keeps(doc["text"])), None)
        (report.removed[failed.name] if failed else report.kept).append(doc)
    assert sum(report.counts().values()) == len(documents)
    return report


# ---------------------------------------------------------------------------------------------------- deduplication


def text_hash(text: str) -> str:
    """SHA-256 of the text after lower-casing and collapsing whitespace (exact duplicates up to spacing and case)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def exact_duplicate_groups(documents: list[Document]) -> list[list[str]]:
    """Groups of two or more document ids whose `text_hash` is equal; the first id of each group is kept."""
    groups: dict[str, list[str]] = {}
    for doc in documents:
        groups.setdefault(text_hash(doc["text"]), []).append(doc["id"])
    return [ids for ids in groups.values() if len(ids) > 1]


def shingles(text: str, size: int = 3, early_modern: bool = True) -> set[str]:
    """Word `size`-grams of the lower-cased letters-only text. With `early_modern`, u/v and i/j are merged, since
    1623 Folio spelling writes 'vp' and 'iust' for 'up' and 'just'."""
    text = text.lower()
    if early_modern:
        text = text.translate(str.maketrans("vj", "ui"))
    words = re.findall(r"[a-z]+", text)
    return {" ".join(words[i : i + size]) for i in range(max(len(words) - size + 1, 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity |a & b| / |a | b| of two shingle sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash(shingle_set: set[str], num_perm: int = 128, seed: int = 1) -> MinHash:
    """A datasketch MinHash of a shingle set (its Jaccard estimate has standard error about 1/sqrt(num_perm))."""
    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch([s.encode() for s in shingle_set])
    return m


def near_duplicate_pairs(
    documents: list[Document], threshold: float = 0.5, size: int = 3, num_perm: int = 128
) -> list[tuple[str, str, float]]:
    """Pairs of documents whose Jaccard similarity of word shingles is at least `threshold`.

    MinHash LSH (datasketch) proposes candidate pairs without comparing all n^2 pairs; each candidate is then
    confirmed with the exact Jaccard, so LSH's false positives are dropped. Returns (id, id, jaccard), sorted.
    """
    sets = {doc["id"]: shingles(doc["text"], size) for doc in documents}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for doc_id, shingle_set in sets.items():
        lsh.insert(doc_id, minhash(shingle_set, num_perm))
    pairs = set()
    for doc_id, shingle_set in sets.items():
        for other in lsh.query(minhash(shingle_set, num_perm)):
            if other != doc_id:
                pairs.add(tuple(sorted((doc_id, other))))
    confirmed = [(a, b, jaccard(sets[a], sets[b])) for a, b in pairs]
    return sorted(p for p in confirmed if p[2] >= threshold)


def connected_groups(pairs: Iterable[tuple[str, str]], ids: Iterable[str]) -> dict[str, str]:
    """Union-find over similarity pairs: each id's group representative (the smallest id in its group)."""
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in parent}


def perturb(text: str, fraction: float, rng: random.Random) -> str:
    """Delete or replace about `fraction` of the words, the way a re-post or a lightly edited copy differs."""
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < fraction / 2:
            continue
        out.append(rng.choice(words) if r < fraction else w)
    return " ".join(out)


def pair_precision_recall(found: Iterable[tuple[str, str]], truth: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Precision and recall of found duplicate pairs against the planted ones (pairs are unordered)."""
    found_set = {tuple(sorted(p[:2])) for p in found}
    truth_set = {tuple(sorted(p[:2])) for p in truth}
    hits = len(found_set & truth_set)
    precision = hits / len(found_set) if found_set else 1.0
    recall = hits / len(truth_set) if truth_set else 1.0
    return {"precision": precision, "recall": recall, "found": len(found_set), "true": len(truth_set)}


# ---------------------------------------------------------------------------------------------------- PII


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "EMAIL": re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    # groups of four (Visa, Mastercard), 4-6-5 (Amex), or 13-19 digits in one run; then Luhn-checked
    "CREDIT_CARD": re.compile(r"\b(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}|\d{4}([ -])\d{6}\2\d{5}|\d{13,19})\b"),
    "IP_ADDRESS": re.compile(rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b"),
    # +country code and groups; (NNN) NNN-NNNN; NNN-NNN-NNNN or NNN.NNN.NNNN with one separator throughout
    "PHONE": re.compile(
        r"(?<![\w.-])(?:\+\d{1,3}[ .-]?\d{1,4}[ .-]\d{3,4}[ .-]\d{3,4}"
        r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}([-.])\d{3}\1\d{4})\b"
    ),
}


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each email, card number (Luhn-checked), IPv4 address and phone number, no overlaps;
    earlier kinds in `PII_PATTERNS` win, so a card number is not also read as a phone number."""
    spans: list[tuple[str, int, int]] = []
    for kind, pattern in PII_PATTERNS.items():
        for m in pattern.finditer(text):
            if kind == "CREDIT_CARD" and not luhn_valid(re.sub(r"\D", "", m.group())):
                continue
            if not any(m.start() < e and s < m.end() for _, s, e in spans):
                spans.append((kind, m.start(), m.end()))
    return sorted(spans, key=lambda span: span[1])


def scrub_pii(text: str) -> tuple[str, Counter[str]]:
    """Replace each PII span with a placeholder such as `<EMAIL>`; returns (text, count per kind)."""
    counts: Counter[str] = Counter()
    for kind, start, end in reversed(find_pii(text)):
        text = f"{text[:start]}<{kind}>{text[end:]}"
        counts[kind] += 1
    return text, counts


def planted_pii_cases(seed: int = 0, per_kind: int = 50) -> list[tuple[str, list[str]]]:
    """A test set: sentences holding one synthetic PII value of a known kind, and look-alikes that are not PII
    (dates, versions, times, product codes, prices, line references). Returns (text, kinds it truly contains)."""
    rng = random.Random(seed)

    def card() -> str:
        body = [rng.choice("3456")] + [str(rng.randrange(10)) for _ in range(14)]
        check = next(d for d in "0123456789" if luhn_valid("".join(body) + d))
        digits = "".join(body) + check
        return " ".join(digits[i : i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else digits

    def n(low: int, high: int) -> int:
        return rng.randrange(low, high)

    phones = [
        lambda: f"+1 {n(200, 999)}-{n(200, 999)}-{n(1000, 9999)}",
        lambda: f"({n(200, 999)}) {n(200, 999)}-{n(1000, 9999)}",
        lambda: f"+44 20 {n(1000, 9999)} {n(1000, 9999)}",
    ]
    makers = {
        "EMAIL": lambda: (
            f"{rng.choice(['ann', 'j.smith', 'ops+alerts'])}{n(0, 99)}@"
            + rng.choice(["example.com", "mail.co.uk", "uni.edu"])
        ),
        "PHONE": lambda: rng.choice(phones)(),
        "IP_ADDRESS": lambda: ".".join(str(n(0, 256)) for _ in range(4)),
        "CREDIT_CARD": card,
    }
    templates = ["Please contact {} before Friday.", "The log shows {} twice.", "Send it to {} and wait.",
                 "Her details, {}, were in the form."]  # fmt: skip
    cases = [(rng.choice(templates).format(make()), [kind]) for kind, make in makers.items() for _ in range(per_kind)]
    negatives = [
        lambda: f"Released on {n(1990, 2026)}-{n(1, 13):02d}-{n(1, 29):02d}.",
        lambda: f"Upgrade to version {n(1, 30)}.{n(0, 20)}.{n(0, 20)} today.",
        lambda: f"The meeting moved to {n(1, 13)}:{n(0, 60):02d} pm.",
        lambda: f"Order number {n(10**15, 10**16)} shipped.",  # 16 digits: fails the Luhn check 9 times in 10
        lambda: f"It costs $1,{n(100, 999)}.{n(10, 99)} in total.",
        lambda: f"See Act {n(1, 6)}, scene {n(1, 8)}, lines {n(1, 300)}-{n(300, 600)}.",
    ]
    cases += [(rng.choice(negatives)(), []) for _ in range(per_kind * 2)]
    rng.shuffle(cases)
    return cases


# ---------------------------------------------------------------------------------------------------- bias screening

TERM_LISTS: dict[str, tuple[str, ...]] = {
    "female": ("she", "her", "hers", "herself", "woman", "women", "girl", "girls", "lady", "ladies", "queen",
               "mother", "daughter", "sister", "wife", "madam", "mistress"),
    "male": ("he", "him", "his", "himself", "man", "men", "boy", "boys", "lord", "lords", "king", "father", "son",
             "brother", "husband", "sir", "master"),
    "age": ("old", "young", "aged", "youth", "elderly", "child", "children"),
    "religion": ("christian", "jew", "jews", "moor", "pagan", "turk", "infidel"),
}  # fmt: skip


def term_rates(texts: Iterable[str], lists: dict[str, tuple[str, ...]] = TERM_LISTS) -> dict[str, float]:
    """Occurrences of each term list per 10,000 words (whole words, case-insensitive), plus `words`."""
    counts: Counter[str] = Counter()
    words = 0
    for text in texts:
        tokens = re.findall(r"[a-z]+", text.lower())
        words += len(tokens)
        counts.update(tokens)
    rates = {name: 1e4 * sum(counts[t] for t in terms) / max(words, 1) for name, terms in lists.items()}
    return rates | {"words": float(words)}


# ---------------------------------------------------------------------------------------------------- splits and files


def split_of(key: str, fractions: dict[str, float], seed: int = 0) -> str:
    """Deterministic split for a document group: a hash of `seed:key` read as a number in [0, 1) picks the split,
    so the assignment never changes when other documents are added or removed."""
    if abs(sum(fractions.values()) - 1) > 1e-9:
        raise CorpusError(f"split fractions must sum to 1, got {fractions}")
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16) / 16**15
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if u < cumulative:
            return name
    return name


def profile(documents: list[Document], count_tokens: Callable[[str], int] | None = None) -> dict[str, dict[str, float]]:
    """Per-domain documents, characters, words, tokens (when `count_tokens` is given), median and 95th-percentile
    words per document, and vocabulary (distinct lower-cased words)."""
    by_domain: dict[str, list[Document]] = {}
    for doc in documents:
        by_domain.setdefault(doc["domain"], []).append(doc)
    table = {}
    for domain, docs in sorted(by_domain.items()):
        lengths = np.array([len(WORD.findall(d["text"])) for d in docs])
        vocabulary = {w for d in docs for w in re.findall(r"[a-z']+", d["text"].lower())}
        row = {"documents": len(docs), "characters": sum(len(d["text"]) for d in docs), "words": int(lengths.sum()),
               "median_words": float(np.median(lengths)), "p95_words": float(np.percentile(lengths, 95)),
               "vocabulary": len(vocabulary)}  # fmt: skip
        if count_tokens is not None:
            row["tokens"] = sum(count_tokens(d["text"]) for d in docs)
        table[domain] = row
    return table


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_corpus(
    splits: dict[str, list[Document]], out_dir: Path, settings: dict[str, Any], shard_documents: int = 1000
) -> dict[str, Any]:
    """Write each split as a Hugging Face `datasets` dataset (Arrow, `out_dir/arrow`) and as JSONL shards
    (`out_dir/jsonl/<split>-00000.jsonl`), plus `manifest.json` with counts, each shard's SHA-256 and the
    `settings` that produced the corpus. Returns the manifest."""
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    (out_dir / "jsonl").mkdir(parents=True, exist_ok=True)
    columns = ["id", "domain", "text"]
    DatasetDict({name: Dataset.from_dict({c: [d[c] for d in docs] for c in columns}) for name, docs in splits.items()}
                ).save_to_disk(str(out_dir / "arrow"))  # fmt: skip
    manifest: dict[str, Any] = {"settings": settings, "splits": {}}
    for name, docs in splits.items():
        shards = []
        for start in range(0, max(len(docs), 1), shard_documents):
            path = out_dir / "jsonl" / f"{name}-{start // shard_documents:05d}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                for doc in docs[start : start + shard_documents]:
                    handle.write(json.dumps({c: doc[c] for c in columns}, ensure_ascii=False) + "\n")
            shards.append({"file": path.relative_to(out_dir).as_posix(), "sha256": sha256_file(path)})
        manifest["splits"][name] = {"documents": len(docs), "characters": sum(len(d["text"]) for d in docs),
                                    "domains": dict(Counter(d["domain"] for d in docs)), "shards": shards}  # fmt: skip
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_corpus(out_dir: Path) -> dict[str, Any]:
    """Re-hash every JSONL shard listed in `manifest.json`; raise CorpusError naming the first that changed."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if sha256_file(out_dir / shard["file"]) != shard["sha256"]:
                raise CorpusError(f"{shard['file']} does not match its manifest hash; rebuild the corpus")
    return manifest


# ---------------------------------------------------------------------------------------------------- image-text


def caption_digit(image: np.ndarray, label: int) -> str:
    """A generated caption for an 8x8 digits image (values 0-16): the digit plus two properties measured from the
    pixels, ink coverage and slant, so captions differ beyond the label."""
    ink = float((image > 4).mean())
    rows, cols = np.nonzero(image > 4)
    slant = np.polyfit(rows, cols, 1)[0] if len(set(rows.tolist())) > 1 else 0.0
    weight = "bold" if ink > 0.45 else "thin" if ink < 0.3 else "medium"
    lean = "leaning right" if slant < -0.15 else "leaning left" if slant > 0.15 else "upright"
    return f"a {weight}, {lean} handwritten digit {label}"


# ---------------------------------------------------------------------------------------------------- the whole chain

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def build_corpus(
    documents: list[Document],
    filters: list[QualityFilter],
    near_thresholds: dict[str, float],
    shingle_size: int = 3,
    fractions: dict[str, float] = SPLIT_FRACTIONS,
    seed: int = 0,
) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """Notebook 03's pipeline in one call: clean, filter, drop exact duplicates, group near-duplicates within each
    domain at that domain's Jaccard threshold in `near_thresholds` (kept, but always in the same split so no split
    leaks into another), scrub PII, split by group.

    Returns (splits, report); the report's counts reconcile: documents = kept + removed by each filter + exact
    duplicates removed.
    """
    repeated = [i for i, n in Counter(doc["id"] for doc in documents).items() if n > 1]
    if repeated:
        raise CorpusError(f"document ids must be unique; repeated: {repeated[:5]}")
    cleaned = [doc | {"text": clean_document(doc["text"])} for doc in documents]
    filtered = apply_filters(cleaned, filters)
    duplicate_ids = {i for group in exact_duplicate_groups(filtered.kept) for i in group[1:]}
    unique = [doc for doc in filtered.kept if doc["id"] not in duplicate_ids]
    missing = {doc["domain"] for doc in unique} - set(near_thresholds)
    if missing:
        raise CorpusError(f"near_thresholds has no threshold for domains {sorted(missing)}")
    pairs = []
    for domain, threshold in near_thresholds.items():
        pairs += near_duplicate_pairs([d for d in unique if d["domain"] == domain], threshold, shingle_size)
    groups = connected_groups([(a, b) for a, b, _ in pairs], [doc["id"] for doc in unique])
    splits: dict[str, list[Document]] = {name: [] for name in fractions}
    pii: Counter[str] = Counter()
    for doc in unique:
        text, found = scrub_pii(doc["text"])
        pii.update(found)
        splits[split_of(groups[doc["id"]], fractions, seed)].append(doc | {"text": text, "group": groups[doc["id"]]})
    report = {"documents": len(documents), "removed_by_filter": {k: len(v) for k, v in filtered.removed.items()},
              "exact_duplicates_removed": len(duplicate_ids), "near_duplicate_pairs": len(pairs),
              "pii_replaced": dict(pii), "split_documents": {k: len(v) for k, v in splits.items()}}  # fmt: skip
    assert len(documents) == len(unique) + len(duplicate_ids) + sum(report["removed_by_filter"].values())
    return splits, report
