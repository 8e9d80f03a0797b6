"""The classifier notebook 12 deploys: which part of Shakespeare's First Folio (comedies, histories, tragedies) a
passage of dialogue comes from, predicted by a linear head on MiniLM sentence embeddings.

Defined for notebook 12 (book chapter 12); notebook 14 monitors it. Depends on `utils.finetuning` (chapter 10, which
reads the texts through `utils.assets`): the task is chapter 10's First Folio genre task, with its passages of
spoken text (speaker names, stage directions and headings removed), its labels and its whole-play split, so the
classifier deployed in chapter 12 is trained on chapter 10's training plays and scored on chapter 10's test plays
(`utils.finetuning.TEST_PLAYS`), and its accuracy is comparable with chapter 10's models. No passage of a test play
is seen in training, so the accuracy says how well the genre generalises, not how well a play's vocabulary is
remembered. numpy and scikit-learn beyond that; embeddings are passed in.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from utils.finetuning import GENRES, genre_dataset

#: Words per passage: about three lines of verse, enough for a sentence embedding to carry some style.
PASSAGE_WORDS = 40


def genre_splits(
    train_per_genre: int,
    test_per_genre: int,
    words: int = PASSAGE_WORDS,
    seed: int = 0,
    texts: dict[str, str] | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test) passages of chapter 10's genre task, each {"text", "label", "play"}, balanced over GENRES:
    `train_per_genre` per genre from chapter 10's training plays, `test_per_genre` from its test plays. Chapter
    10's validation plays are left out: the head has no setting chosen on held-out data. `texts` defaults to the
    course's Shakespeare asset; raises utils.finetuning.DatasetError when a split cannot fill its quota."""
    splits = {"train": train_per_genre, "validation": 0, "test": test_per_genre}
    data = genre_dataset(splits, words=words, seed=seed, texts=texts)
    return data["train"], data["test"]


def labels_of(passages: list[dict[str, str]]) -> np.ndarray:
    """Genre indices (into GENRES) of the passages' labels."""
    return np.array([GENRES.index(p["label"]) for p in passages])


def fit_head(embeddings: np.ndarray, labels: np.ndarray, c: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on (unit-length) sentence embeddings, classes weighted by their inverse
    frequency; returns its (weight [classes, dim], bias [classes]) for a linear layer. `c` is the inverse L2
    penalty (scikit-learn's C)."""
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(embeddings, labels)
    return np.ascontiguousarray(model.coef_, np.float32), np.ascontiguousarray(model.intercept_, np.float32)
