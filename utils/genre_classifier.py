"""The classifier notebook 12 deploys: which part of Shakespeare's First Folio (comedies, histories, tragedies) a
passage of dialogue comes from, predicted by a linear head on MiniLM sentence embeddings.

Defined for notebook 12 (book chapter 12). The labels are the Folio's own three sections (1623); the passages are
speeches from the course's Shakespeare asset with speaker names and stage directions removed, so the model reads
only what characters say. Train and test passages come from different plays: a test play is never seen in
training, so the accuracy says how well the genre generalises, not how well a play's vocabulary is remembered.
Standard library, numpy and scikit-learn; texts and embeddings are passed in.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

GENRES = ("comedy", "history", "tragedy")
#: The First Folio's table of contents (1623), by the course asset's file names (modern Gutenberg editions).
#: Troilus and Cressida is printed among the tragedies there, Cymbeline is its last tragedy; Pericles and the
#: poems are not in the Folio and are left out.
FOLIO_GENRES = {
    **dict.fromkeys(["tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
                     "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
                     "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
                     "twelfth_night", "winters_tale"], "comedy"),
    **dict.fromkeys(["john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
                     "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii"], "history"),
    **dict.fromkeys(["troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
                     "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello",
                     "antony_and_cleopatra", "cymbeline"], "tragedy"),
}  # fmt: skip
#: Plays held out for testing: three comedies, two histories, three tragedies (about a fifth of each section).
TEST_PLAYS = ("twelfth_night", "merchant_of_venice", "tempest", "henry_v", "richard_iii", "hamlet", "macbeth",
              "othello")  # fmt: skip
#: A speaker's name alone on a line: "Ber." or "First Lord." (most editions) or "THESEUS" (A Midsummer Night's Dream)
SPEAKER = re.compile(r"^(?:[A-Z][\w' .-]{0,30}\.|[A-Z][A-Z' .-]{1,30})$")
STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")


@dataclass(frozen=True)
class Passage:
    text: str
    genre: str
    play: str


def speeches(text: str) -> list[str]:
    """The lines characters speak in a Gutenberg play, in order: speaker-name lines, stage directions in
    [brackets] and the licence text before the first speech dropped."""
    lines = []
    for block in text.split("\n\n"):
        rows = [row.strip() for row in block.strip().splitlines()]
        if len(rows) < 2 or not SPEAKER.match(rows[0]) or rows[0].startswith(("ACT ", "SCENE ")):
            continue
        spoken = (STAGE_DIRECTION.sub("", row).strip() for row in rows[1:])
        lines += [row for row in spoken if row]
    return lines


def play_passages(text: str, words: int = 40) -> list[str]:
    """Consecutive spoken lines joined until a passage has at least `words` words."""
    passages, current = [], []
    for line in speeches(text):
        current.append(line)
        if sum(len(row.split()) for row in current) >= words:
            passages.append(" ".join(current))
            current = []
    return passages


def genre_passages(texts: dict[str, str], per_play: int, words: int = 40, seed: int = 0) -> list[Passage]:
    """`per_play` passages (evenly spread through the play, from a seeded start) of every Folio play in `texts`
    ({text id: text}, e.g. utils.assets.shakespeare_texts()), each labelled with its play's Folio section."""
    rng, chosen = random.Random(seed), []
    for play, genre in FOLIO_GENRES.items():
        if play + "_gut" not in texts:
            raise KeyError(f"{play}_gut is missing from the texts; pass utils.assets.shakespeare_texts()")
        passages = play_passages(texts[play + "_gut"], words)
        step = len(passages) / per_play
        offset = rng.random() * step
        chosen += [Passage(passages[int(offset + i * step)], genre, play) for i in range(min(per_play, len(passages)))]
    return chosen


def split_by_play(passages: list[Passage]) -> tuple[list[Passage], list[Passage]]:
    """(train, test): test holds every passage of TEST_PLAYS, train all the others."""
    return [p for p in passages if p.play not in TEST_PLAYS], [p for p in passages if p.play in TEST_PLAYS]


def labels_of(passages: list[Passage]) -> np.ndarray:
    """Genre indices (into GENRES) of the passages."""
    return np.array([GENRES.index(p.genre) for p in passages])


def fit_head(embeddings: np.ndarray, labels: np.ndarray, c: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on (unit-length) sentence embeddings, classes weighted by their inverse
    frequency; returns its (weight [classes, dim], bias [classes]) for a linear layer. `c` is the inverse L2
    penalty (scikit-learn's C)."""
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(embeddings, labels)
    return np.ascontiguousarray(model.coef_, np.float32), np.ascontiguousarray(model.intercept_, np.float32)
