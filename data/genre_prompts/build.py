"""Rebuild the genre prompting sets that notebook 13 ships, from chapter 10's First Folio genre task.

    python data/genre_prompts/build.py          # rewrites eval.jsonl, validation.jsonl and pool.jsonl here
    python data/genre_prompts/build.py --check  # exit 1 if the shipped files differ from a rebuild

`eval.jsonl` is chapter 10's test split exactly (`utils.finetuning.genre_dataset(words=24)["test"]`: 30 passages
per genre from six whole plays that no other split uses), so prompting, prompt tuning and chapter 10's LoRA adapter
are scored on the same passages. `validation.jsonl` is the same call's validation split (15 passages per genre
from three other whole plays): notebook 13 chooses its prompts there, never on the test split. `pool.jsonl` holds
the few-shot demonstrations: 16 passages per genre taken in order from the same call's train split, whose plays
never appear in the validation or test split. See README.md here.
"""

import argparse
import json
import sys
from pathlib import Path

from utils import finetuning as ft

HERE = Path(__file__).resolve().parent
WORDS = 24  # words per passage, as chapter 10's notebook and its cached adapter (`train_genre_adapter`) use
POOL_PER_GENRE = 16  # enough for 8-shot prompts drawn many ways


def build() -> dict[str, list[dict[str, str]]]:
    data = ft.genre_dataset(words=WORDS)
    pool = [row for genre in ft.GENRES for row in [r for r in data["train"] if r["label"] == genre][:POOL_PER_GENRE]]
    return {"eval": data["test"], "validation": data["validation"], "pool": pool}


def lines(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args()
    built = build()
    for name, rows in built.items():
        path = HERE / f"{name}.jsonl"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != lines(rows):
                print(f"{path} differs from a rebuild: run python data/genre_prompts/build.py", file=sys.stderr)
                return 1
        else:
            path.write_text(lines(rows), encoding="utf-8")
            print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
