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
                        documents.append(
                            {
                                "id": f"{relative}:{name}:{node.lineno if name != '<module>' else 0}",
                                "domain": domain,
                                "source": relative,
                                "text": doc,
                            }
                        )
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
                documents.append(
                    {"id": f"{dist.metadata['Name']}:{file}", "domain": domain, "source": str(file), "text": text}
                )
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


def remove_near_duplicates(
    documents: list[Document], pairs: Iterable[tuple[str, str]]
) -> tuple[list[Document], list[Document]]:
    """Drop each document that is a near-duplicate (a pair in `pairs`) of an earlier document that was kept.

    Documents are visited in order, so the first of each set of copies survives. Unlike keeping one document per
    connected group, this never drops a document only because a chain of pairs links it to a kept one (A ~ B and
    B ~ C with A and C unlike: B goes, C stays). Returns (kept, removed); together they are `documents`, and each
    removed document carries `duplicate_of`, the id of the earliest kept document it duplicates, for auditing.
    """
    similar: dict[str, set[str]] = {}
    for a, b in pairs:
        similar.setdefault(a, set()).add(b)
        similar.setdefault(b, set()).add(a)
    kept: list[Document] = []
    removed: list[Document] = []
    kept_order: dict[str, int] = {}
    for doc in documents:
        twins = similar.get(doc["id"], set()) & kept_order.keys()
        if twins:
            removed.append(doc | {"duplicate_of": min(twins, key=kept_order.__getitem__)})
        else:
            kept_order[doc["id"]] = len(kept)
            kept.append(doc)
    return kept, removed


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


#: PII in the formats people actually write, for measuring a scrubber honestly: (text, [(kind, value), ...]).
#: Written from the format conventions, not from `PII_PATTERNS`, and every value is reserved for examples, so no
#: real person is named: e-mail syntax from RFC 5322 and RFC 6531 at the example domains of RFC 2606; telephone
#: numbers in ITU-T E.123 international and national notation, in the fictional ranges of the North American
#: Numbering Plan (555-0100 to 555-0199), Ofcom (020 7946 0xxx, 07700 900xxx) and ACMA (0491 570 xxx); IP
#: addresses from the documentation blocks of RFC 5737 (IPv4) and RFC 3849 (IPv6); payment-card test numbers the
#: card networks publish for integration testing; the IBAN example of ISO 13616; the US Social Security number
#: the SSA itself printed in its advertising (219-09-9999); fictional names and a fictional street address. Kinds
#: the scrubber has no pattern for (SSN, IBAN, STREET_ADDRESS, PERSON) are there on purpose: a scrubber's recall
#: is over the personal data in the text, not over the formats it knows.
PII_TEST_SET: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Contact Jane.Doe@Example.COM for the data.", (("EMAIL", "Jane.Doe@Example.COM"),)),
    ("Reports go to ops+alerts@mail.example.org.", (("EMAIL", "ops+alerts@mail.example.org"),)),
    ("From: Bob Stone <bob_stone@example.co.uk>", (("PERSON", "Bob Stone"), ("EMAIL", "bob_stone@example.co.uk"))),
    ("Write to o'brien@example.ie with questions.", (("EMAIL", "o'brien@example.ie"),)),
    ("mailto:carol.smith@example.edu?subject=data", (("EMAIL", "carol.smith@example.edu"),)),
    ("Escribe a josé.martínez@example.es mañana.", (("EMAIL", "josé.martínez@example.es"),)),
    ("reach me: jdoe at example dot com", (("EMAIL", "jdoe at example dot com"),)),
    ("Send CVs to hr[at]example[dot]net please.", (("EMAIL", "hr[at]example[dot]net"),)),
    ("Call +1 202-555-0143 after nine.", (("PHONE", "+1 202-555-0143"),)),
    ("Call (202) 555-0143 after nine.", (("PHONE", "(202) 555-0143"),)),
    ("Office: +1 (202) 555-0178 ext. 204", (("PHONE", "+1 (202) 555-0178"),)),
    ("Call 202 555 0143 after nine.", (("PHONE", "202 555 0143"),)),
    ("Call 2025550143 after nine.", (("PHONE", "2025550143"),)),
    ("Toll free: 1-800-555-0199.", (("PHONE", "1-800-555-0199"),)),
    ("Fax 202.555.0147", (("PHONE", "202.555.0147"),)),
    ("London office +44 20 7946 0958.", (("PHONE", "+44 20 7946 0958"),)),
    ("London office 020 7946 0958.", (("PHONE", "020 7946 0958"),)),
    ("Text me on 07700 900461 tonight.", (("PHONE", "07700 900461"),)),
    ("Paris : +33 1 23 45 67 89", (("PHONE", "+33 1 23 45 67 89"),)),
    ("Mobile (AU) +61 491 570 156", (("PHONE", "+61 491 570 156"),)),
    ("Mobile (AU) 0491 570 156", (("PHONE", "0491 570 156"),)),
    ("<a href='tel:+12025550143'>call</a>", (("PHONE", "+12025550143"),)),
    ("Connection from 192.0.2.44 refused", (("IP_ADDRESS", "192.0.2.44"),)),
    ("proxy at 198.51.100.7:8080 timed out", (("IP_ADDRESS", "198.51.100.7"),)),
    ("blocked host 203.0.113.255.", (("IP_ADDRESS", "203.0.113.255"),)),
    ("client 2001:db8::8a2e:370:7334 logged in", (("IP_ADDRESS", "2001:db8::8a2e:370:7334"),)),
    ("listen on [2001:db8:0:0:1:0:0:1]:443", (("IP_ADDRESS", "2001:db8:0:0:1:0:0:1"),)),
    ("Card 4111 1111 1111 1111 exp 12/29", (("CREDIT_CARD", "4111 1111 1111 1111"),)),
    ("card: 5555-5555-5555-4444", (("CREDIT_CARD", "5555-5555-5555-4444"),)),
    ("AMEX 3782 822463 10005 on file", (("CREDIT_CARD", "3782 822463 10005"),)),
    ("paid with 6011111111111117 yesterday", (("CREDIT_CARD", "6011111111111117"),)),
    ("Diners Club 3056 9309 0259 04 declined", (("CREDIT_CARD", "3056 9309 0259 04"),)),
    ("Visa 4012.8888.8888.1881 (dots)", (("CREDIT_CARD", "4012.8888.8888.1881"),)),
    ("SSN 219-09-9999 on the form", (("SSN", "219-09-9999"),)),
    ("IBAN GB82 WEST 1234 5698 7654 32", (("IBAN", "GB82 WEST 1234 5698 7654 32"),)),
    ("She lives at 742 Evergreen Terrace, Springfield.", (("STREET_ADDRESS", "742 Evergreen Terrace"),)),
    ("Signed, Dr. Ada Quill, 3 May", (("PERSON", "Ada Quill"),)),
    # look-alikes in real formats that hold no personal data
    ("Upgrade to version 1.2.3.4 of the library.", ()),
    ("The netmask is 255.255.255.0 by default.", ()),
    ("Object identifier 2.5.4.3 names the common-name attribute.", ()),
    ("ISBN 978-0-306-40615-7, second printing.", ()),
    ("Catalogue number 978.123.4567 in the index.", ()),
    ("Released 2024-03-15 at 10:30:45 UTC.", ()),
    ("ZIP code 20500-0003.", ()),
    ("DOI 10.1000/182 resolves to the handbook.", ()),
    ("Request id 123e4567-e89b-12d3-a456-426614174000 failed.", ()),
    ("Timestamp 1700000000000 in milliseconds.", ()),
    ("Order 4111111111111112 shipped.", ()),
    ("Tracking number 1Z999AA10123456784.", ()),
    ("It costs $1,234.56 in total.", ()),
    ("See Act 3, scene 1, lines 56-88.", ()),
    ("Journal 71(2) (1999) 161-190.", ()),
    ("Coordinates 51.5074, -0.1278 (London).", ()),
)


def pii_detection_report(
    cases: Iterable[tuple[str, Iterable[tuple[str, str]]]],
    detect: Callable[[str], list[tuple[str, int, int]]] | None = None,
) -> dict[str, Any]:
    """Score a PII detector (default `find_pii`) on labelled `cases` of (text, [(kind, value), ...]).

    A true value counts as *caught* only when spans of its own kind cover every one of its characters (a phone
    number found without its country code still leaks); *partly* when some span overlaps it; else *missed*. A found
    span is a false positive when it overlaps no true value of its kind. Returns per-kind counts ({kind: {"true",
    "caught", "partly", "missed"}}), overall recall (caught / true values) and precision (spans on a true value /
    all spans), and the missed values and false positives as lists, so the report says what was missed, not only
    how much.
    """
    detect = detect or find_pii
    per_kind: dict[str, Counter[str]] = {}
    missed, false_positives, correct_spans, all_spans = [], [], 0, 0
    for text, truths in cases:
        spans = detect(text)
        located = []
        for kind, value in truths:
            start = text.find(value)
            if start < 0:
                raise CorpusError(f"value {value!r} does not occur in {text!r}")
            located.append((kind, start, start + len(value)))
        for kind, start, end in located:
            covered = {i for k, s, e in spans if k == kind for i in range(max(s, start), min(e, end))}
            outcome = "caught" if len(covered) == end - start else "partly" if covered else "missed"
            per_kind.setdefault(kind, Counter()).update(["true", outcome])
            if outcome != "caught":
                missed.append((kind, text[start:end], outcome))
        for kind, start, end in spans:
            all_spans += 1
            if any(k == kind and start < e and s < end for k, s, e in located):
                correct_spans += 1
            else:
                false_positives.append((kind, text[start:end], text))
    true_values = sum(c["true"] for c in per_kind.values())
    return {
        "per_kind": {kind: {k: c[k] for k in ("true", "caught", "partly", "missed")} for kind, c in per_kind.items()},
        "recall": sum(c["caught"] for c in per_kind.values()) / max(true_values, 1),
        "precision": correct_spans / all_spans if all_spans else 1.0,
        "missed": missed,
        "false_positives": false_positives,
    }


# ---------------------------------------------------------------------------------------------------- bias screening

#: Term lists for a first bias screen, one social axis per list, so that counts for different axes never mix.
#: Sources: the gender lists follow the word lists of Garg et al. (2018, "Word embeddings quantify 100 years of
#: gender and ethnic stereotypes", PNAS), to which we add the forms of address frequent in the plays (lord/lady,
#: king/queen, sir/madam, master/mistress, husband/wife); the religion list names the adherents of the six
#: religions Brown et al. (2020, GPT-3, section 6.2.3) probed, plus the period words for non-believers the plays
#: use (pagan, infidel, heathen); the age list follows the age axis of HolisticBias (Smith et al., 2022). Modern
#: lists for ethnicity (HolisticBias's race/ethnicity and nationality axes) name groups the plays never mention,
#: so that list is ours, taken from the plays' own words for peoples (Moor, Ethiope, Turk, Egyptian...). "Jew"
#: sits under religion here though the plays often use it as an ethnic label: a word list cannot tell the two
#: apart, which is one reason to read the contexts (`concordance`) and not only the counts.
TERM_LISTS: dict[str, tuple[str, ...]] = {
    "female": (
        "she",
        "her",
        "hers",
        "herself",
        "woman",
        "women",
        "girl",
        "girls",
        "female",
        "females",
        "mother",
        "mothers",
        "daughter",
        "daughters",
        "sister",
        "sisters",
        "aunt",
        "aunts",
        "niece",
        "nieces",
        "lady",
        "ladies",
        "queen",
        "queens",
        "madam",
        "mistress",
        "wife",
        "wives",
    ),
    "male": (
        "he",
        "him",
        "his",
        "himself",
        "man",
        "men",
        "boy",
        "boys",
        "male",
        "males",
        "father",
        "fathers",
        "son",
        "sons",
        "brother",
        "brothers",
        "uncle",
        "uncles",
        "nephew",
        "nephews",
        "lord",
        "lords",
        "king",
        "kings",
        "sir",
        "master",
        "husband",
        "husbands",
    ),
    "age": ("old", "young", "aged", "elderly", "youth", "youthful", "child", "children", "teenage", "senior"),
    "religion": (
        "christian",
        "christians",
        "jew",
        "jews",
        "jewish",
        "muslim",
        "muslims",
        "hindu",
        "hindus",
        "buddhist",
        "buddhists",
        "atheist",
        "atheists",
        "pagan",
        "pagans",
        "infidel",
        "infidels",
        "heathen",
        "heathens",
    ),
    "ethnicity": (
        "moor",
        "moors",
        "blackamoor",
        "blackamoors",
        "ethiop",
        "ethiope",
        "ethiopes",
        "ethiopian",
        "turk",
        "turks",
        "egyptian",
        "egyptians",
        "gypsy",
        "tartar",
        "tartars",
    ),
}


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


def concordance(texts: Iterable[str], terms: Iterable[str], width: int = 40, limit: int = 5) -> list[str]:
    """Up to `limit` key-word-in-context lines: each whole-word, case-insensitive occurrence of a term with `width`
    characters either side, newlines flattened. What a term count actually counted."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)
    lines: list[str] = []
    for text in texts:
        for m in pattern.finditer(text):
            left = text[max(m.start() - width, 0) : m.start()].replace("\n", " ")
            right = text[m.end() : m.end() + width].replace("\n", " ")
            lines.append(f"{left:>{width}}[{m.group()}]{right}")
            if len(lines) == limit:
                return lines
    return lines


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
        row = {
            "documents": len(docs),
            "characters": sum(len(d["text"]) for d in docs),
            "words": int(lengths.sum()),
            "median_words": float(np.median(lengths)),
            "p95_words": float(np.percentile(lengths, 95)),
            "vocabulary": len(vocabulary),
        }
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
    DatasetDict(
        {name: Dataset.from_dict({c: [d[c] for d in docs] for c in columns}) for name, docs in splits.items()}
    ).save_to_disk(str(out_dir / "arrow"))
    manifest: dict[str, Any] = {"settings": settings, "splits": {}}
    for name, docs in splits.items():
        shards = []
        for start in range(0, max(len(docs), 1), shard_documents):
            path = out_dir / "jsonl" / f"{name}-{start // shard_documents:05d}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                for doc in docs[start : start + shard_documents]:
                    handle.write(json.dumps({c: doc[c] for c in columns}, ensure_ascii=False) + "\n")
            shards.append({"file": path.relative_to(out_dir).as_posix(), "sha256": sha256_file(path)})
        manifest["splits"][name] = {
            "documents": len(docs),
            "characters": sum(len(d["text"]) for d in docs),
            "domains": dict(Counter(d["domain"] for d in docs)),
            "shards": shards,
        }
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
    remove_near: Iterable[str] = (),
) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """Notebook 03's pipeline in one call: clean, filter, drop exact duplicates, find near-duplicates within each
    domain at that domain's Jaccard threshold in `near_thresholds`, remove them in the domains named in
    `remove_near` (keeping the first copy, `remove_near_duplicates`), group the rest (kept, but always in the same
    split so no split leaks into another), scrub PII, split by group.

    Returns (splits, report); the report's counts reconcile: documents = kept + removed by each filter + exact
    duplicates removed + near-duplicates removed.
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
    unknown = set(remove_near) - set(near_thresholds)
    if unknown:
        raise CorpusError(f"remove_near names domains without a threshold: {sorted(unknown)}")
    pairs, near_removed = [], []
    for domain, threshold in near_thresholds.items():
        in_domain = [d for d in unique if d["domain"] == domain]
        found = near_duplicate_pairs(in_domain, threshold, shingle_size)
        if domain in set(remove_near):
            dropped = {d["id"] for d in remove_near_duplicates(in_domain, [(a, b) for a, b, _ in found])[1]}
            near_removed += [d for d in in_domain if d["id"] in dropped]
            found = [p for p in found if p[0] not in dropped and p[1] not in dropped]
        pairs += found
    removed_ids = {d["id"] for d in near_removed}
    unique = [doc for doc in unique if doc["id"] not in removed_ids]
    groups = connected_groups([(a, b) for a, b, _ in pairs], [doc["id"] for doc in unique])
    splits: dict[str, list[Document]] = {name: [] for name in fractions}
    pii: Counter[str] = Counter()
    for doc in unique:
        text, found = scrub_pii(doc["text"])
        pii.update(found)
        splits[split_of(groups[doc["id"]], fractions, seed)].append(doc | {"text": text, "group": groups[doc["id"]]})
    report = {
        "documents": len(documents),
        "removed_by_filter": {k: len(v) for k, v in filtered.removed.items()},
        "exact_duplicates_removed": len(duplicate_ids),
        "near_duplicates_removed": len(near_removed),
        "near_duplicate_pairs": len(pairs),
        "pii_replaced": dict(pii),
        "split_documents": {k: len(v) for k, v in splits.items()},
    }
    assert len(documents) == len(unique) + len(duplicate_ids) + len(near_removed) + sum(
        report["removed_by_filter"].values()
    )
    return splits, report
