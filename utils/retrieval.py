"""Retrieval-augmented generation and a tool-using agent on LangChain's core interfaces: the course's own
documentation as a corpus, a sentence encoder as LangChain `Embeddings`, a FAISS index as a LangChain
`VectorStore`, a local transformers chat model as a LangChain `BaseChatModel`, retrieval measured by recall@k,
answers checked for correctness and for support by the retrieved text, and an agent loop whose tool calls are
parsed robustly from whatever a small model writes.

Defined for notebook 15 (book chapter 15, *Future Trends in Pretraining Foundation Models*); `benchmarks/
retrieval_search.py` times the FAISS index against exact numpy search. Depends on `utils.prompting` (batched
generation); needs langchain-core, faiss-cpu, numpy and torch. The LangChain classes take any sentence-transformers
encoder and any transformers chat model, so the same code runs with larger models.

    store = FaissStore.from_documents(chunk_documents(course_documents(root)), SentenceEmbeddings(encoder))
    chain = rag_chain(store.as_retriever(search_kwargs={"k": 3}), LocalChatModel(model=llm, tokenizer=tokenizer))
    chain.invoke("Which environment variable makes the notebooks run at smoke size?")
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.tools import BaseTool, tool
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict

from utils.prompting import generate

# ---------------------------------------------------------------------------------------------------- the corpus


def markdown_sections(text: str, title: str = "") -> list[tuple[str, str]]:
    """(heading, body) for each section of a markdown text; text before the first heading goes under `title`.
    Fenced code blocks stay inside their section and their `#` lines are not taken for headings."""
    sections: list[tuple[str, list[str]]] = [(title, [])]
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if match:
            sections.append((match.group(1).strip(), []))
        else:
            sections[-1][1].append(line)
    return [(heading, "\n".join(body).strip()) for heading, body in sections if "\n".join(body).strip()]


def python_docstrings(source: str, module: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of a Python module, its public classes and functions and their public methods,
    read with `ast` (nothing is imported)."""
    tree = ast.parse(source)
    found = [(module, ast.get_docstring(tree) or "")]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in getattr(node, "body", []):
            definition = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if definition and not child.name.startswith("_"):
                found.append((f"{prefix}.{child.name}", ast.get_docstring(child) or ""))
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}.{child.name}")

    visit(tree, module)
    return [(name, doc) for name, doc in found if doc.strip()]


def course_documents(root: str | Path, exclude: Sequence[str] = ()) -> list[Document]:
    """The course's documentation as LangChain Documents, one per section: README.md and CONTRIBUTING.md by
    markdown heading, each notebook's markdown cells by heading, and every docstring of `utils/*.py`.

    Metadata: `source` (path relative to `root`) and `section` (heading or qualified name). Paths containing any
    string of `exclude` are left out (e.g. the notebook that evaluates on this corpus). Code cells, outputs and
    `data/` are never read, so no evaluation answer key can leak into the corpus."""
    root = Path(root)
    if not (root / "utils").is_dir() or not (root / "notebooks").is_dir():
        raise FileNotFoundError(f"{root} is not the course's root folder (it needs utils/ and notebooks/)")
    docs: list[Document] = []

    def add(path: Path, sections: Iterable[tuple[str, str]]) -> None:
        source = path.relative_to(root).as_posix()
        if any(part in source for part in exclude):
            return
        docs.extend(
            Document(page_content=body, metadata={"source": source, "section": head}) for head, body in sections
        )

    for name in ("README.md", "CONTRIBUTING.md"):
        if (root / name).exists():
            add(root / name, markdown_sections((root / name).read_text(encoding="utf-8"), name))
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        add(path, markdown_sections(text, path.stem))
    for path in sorted((root / "utils").glob("*.py")):
        add(path, python_docstrings(path.read_text(encoding="utf-8"), f"utils.{path.stem}"))
    return docs


def chunk_documents(docs: Sequence[Document], words: int = 120) -> list[Document]:
    """Split each document into chunks of about `words` words at paragraph boundaries (a paragraph longer than
    that is cut at sentence ends, then at `words`), each chunk starting with its section's heading so that it
    reads on its own. Metadata is copied, plus `chunk`, the chunk's index in the document."""
    if words < 10:
        raise ValueError(f"chunks of fewer than 10 words carry too little context, got words={words}")
    chunks: list[Document] = []
    for doc in docs:
        pieces: list[str] = []
        for paragraph in re.split(r"\n\s*\n", doc.page_content):
            tokens = paragraph.split()
            if len(tokens) <= words:
                pieces.append(paragraph.strip())
                continue
            sentences = re.split(r"(?<=[.!?])\s+", paragraph.strip())
            for sentence in sentences:
                cut = sentence.split()
                pieces += [" ".join(cut[i : i + words]) for i in range(0, len(cut), words)]
        current: list[str] = []
        for piece in [p for p in pieces if p]:
            if current and len(" ".join(current + [piece]).split()) > words:
                chunks.append(_chunk(doc, current, len(chunks)))
                current = []
            current.append(piece)
        if current:
            chunks.append(_chunk(doc, current, len(chunks)))
    return chunks


def _chunk(doc: Document, pieces: list[str], number: int) -> Document:
    heading = doc.metadata.get("section", "")
    text = "\n\n".join(pieces)
    return Document(page_content=f"{heading}\n{text}" if heading else text, metadata={**doc.metadata, "chunk": number})


# ------------------------------------------------------------------------------------- embeddings and the index


class SentenceEmbeddings(Embeddings):
    """LangChain `Embeddings` around a sentence-transformers encoder (e.g. `utils.assets.load_minilm()`): unit-length
    vectors, so an inner product is a cosine similarity. (langchain-huggingface wraps the same thing but does not
    install with the course's pins.)"""

    def __init__(self, encoder: Any, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dimension) of normalised embeddings."""
        if isinstance(texts, str) or not texts:
            raise ValueError("embed a non-empty list of strings")
        vectors = self.encoder.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()


def exact_search(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search in numpy: (scores, row indices), each (len(queries), k), best first.
    The baseline the FAISS index is checked and timed against."""
    if matrix.ndim != 2 or queries.ndim != 2 or matrix.shape[1] != queries.shape[1]:
        raise ValueError(f"need 2-d arrays of equal width, got {matrix.shape} and {queries.shape}")
    k = min(k, len(matrix))
    scores = queries @ matrix.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


class FaissStore(VectorStore):
    """A LangChain `VectorStore` on a FAISS index of normalised embeddings searched by inner product (= cosine).

    `index_factory` is any FAISS factory string: "Flat" searches exactly (every vector compared), "HNSW32" builds
    a navigable small-world graph (Malkov & Yashunin, 2018) that visits a small part of a large collection.
    `as_retriever()`, `similarity_search()` and the rest of LangChain's vector-store interface work on it."""

    def __init__(self, embedding: Embeddings, index_factory: str = "Flat") -> None:
        import faiss

        self.embedding = embedding
        self.index_factory = index_factory
        self._faiss = faiss
        self.index: Any = None
        self.documents: list[Document] = []

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def add_vectors(self, vectors: np.ndarray, documents: Sequence[Document]) -> list[str]:
        """Add precomputed embeddings (one row per document, unit length) and their documents."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(documents):
            raise ValueError(f"need one embedding row per document, got {vectors.shape} for {len(documents)}")
        if self.index is None:
            self.index = self._faiss.index_factory(
                vectors.shape[1], self.index_factory, self._faiss.METRIC_INNER_PRODUCT
            )
        elif vectors.shape[1] != self.index.d:
            raise ValueError(f"embeddings of width {vectors.shape[1]} do not fit an index of width {self.index.d}")
        start = len(self.documents)
        self.index.add(vectors)
        self.documents += list(documents)
        return [str(i) for i in range(start, len(self.documents))]

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadata dicts for {len(texts)} texts")
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metadatas, strict=True)]
        vectors = np.asarray(self.embedding.embed_documents(texts), dtype=np.float32)
        return self.add_vectors(vectors, docs)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, document indices), each (len(queries), k), best first, for a batch of query embeddings."""
        if self.index is None or not self.documents:
            raise ValueError("the store is empty: add documents before searching")
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.documents)))

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        scores, rows = self.search_vectors(np.asarray([self.embedding.embed_query(query)]), k)
        return [(self.documents[i], float(s)) for s, i in zip(scores[0], rows[0], strict=True) if i >= 0]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (score + 1) / 2  # cosine in [-1, 1] -> relevance in [0, 1]

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        index_factory: str = "Flat",
        **kwargs: Any,
    ) -> FaissStore:
        store = cls(embedding, index_factory)
        store.add_texts(texts, metadatas)
        return store


# -------------------------------------------------------------------------------------------- evaluation sets


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def load_jsonl(path: str | Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file, each checked to have non-empty `required` fields; ValueError naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        missing = [key for key in required if not isinstance(row, dict) or row.get(key) in (None, "", [])]
        if missing:
            raise ValueError(f"{path}:{number}: missing {missing}")
        rows.append(row)
    return rows


def evidence_found(text: str, evidence: str) -> bool:
    """Whether `evidence` occurs in `text`, ignoring case and how whitespace is laid out."""
    return _squash(evidence) in _squash(text)


def recall_at_k(retrieved: Sequence[Sequence[str]], evidence: Sequence[str], ks: Sequence[int]) -> dict[int, float]:
    """Share of questions whose evidence string occurs in one of the first k retrieved chunk texts, for each k.
    Evidence is matched as text, not by chunk id, so the score survives re-chunking the corpus."""
    if len(retrieved) != len(evidence) or not evidence:
        raise ValueError(f"need one retrieved list per question, got {len(retrieved)} for {len(evidence)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    hits = {k: 0 for k in ks}
    for texts, quote in zip(retrieved, evidence, strict=True):
        first = next((i for i, text in enumerate(texts) if evidence_found(text, quote)), None)
        for k in ks:
            hits[k] += first is not None and first < k
    return {k: hits[k] / len(evidence) for k in ks}


# -------------------------------------------------------------------------------------------- checking answers

#: Function words ignored when checking an answer's content (a short English list; numbers are always kept).
_STOPWORD_TEXT = (
    "a an the of to in on for by with from as at is are was were be been being it its this that these those and or "
    "not no yes but if then than so such which who whom what when where why how do does did done can could should "
    "would will shall may might must has have had i you he she we they them their our your my me us there here "
    "about into over under also only just very more most less least some any each every all both one per via "
    "answer context question called named uses use used"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

ABSTAIN = re.compile(
    r"\b(i (do not|don't|dont) know|not (mentioned|stated|given|provided|specified|in the context)|"
    r"(cannot|can't|can not) (answer|tell|say|find)|no (information|mention)|unknown)\b"
)


def normalize(text: str) -> list[str]:
    """Lower-cased word tokens: letters and digits, everything else a separator ("1,797" -> ["1", "797"]), so an
    answer and a source are compared on the same footing."""
    return re.findall(r"[a-z0-9]+", text.lower())


def answer_correct(answer: str, gold: Sequence[str]) -> bool:
    """True when the answer contains one of the accepted answers `gold` as a run of whole tokens."""
    words = " " + " ".join(normalize(answer)) + " "
    return any(" " + " ".join(normalize(g)) + " " in words for g in gold if normalize(g))


def is_abstention(answer: str) -> bool:
    """True for an answer that declines ("I don't know", "not in the context", "cannot answer") or is empty."""
    return not normalize(answer) or bool(ABSTAIN.search(answer.lower()))


def support(answer: str, sources: Sequence[str], question: str = "") -> float | None:
    """Share of the answer's claims found in `sources`: over the answer's content tokens that are not in the
    question (what it adds), the share that occur in the sources, with any number missing from the sources
    making it 0. None when the answer adds no content token (nothing to check)."""
    source_tokens = set(normalize(" ".join(sources)))
    asked = set(normalize(question))
    added = [t for t in normalize(answer) if t not in STOPWORDS and t not in asked]
    if not added:
        return None
    if any(t.isdigit() and t not in source_tokens for t in added):
        return 0.0
    return sum(t in source_tokens for t in added) / len(added)


def hallucinated(answer: str, sources: Sequence[str], question: str = "", threshold: float = 0.75) -> bool:
    """An answer that asserts something (not an abstention, adds content) whose `support` by `sources` is below
    `threshold`: what the model says is not in the text it was given (or, closed-book, in the text that holds
    the answer). A token test, so it flags paraphrases as well as inventions; it is a screen, not a judge."""
    if is_abstention(answer):
        return False
    score = support(answer, sources, question)
    return score is not None and score < threshold


# ------------------------------------------------------------------------------------- the chat model, for LangChain

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "user"}


def _chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    turns = []
    for message in messages:
        role = _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"cannot send a {message.type!r} message to a local chat model")
        turns.append({"role": role, "content": message.text})
    return turns


def _cut(text: str, stop: Sequence[str] | None) -> str:
    for word in stop or ():
        text = text.split(word)[0]
    return text.strip()


class LocalChatModel(BaseChatModel):
    """A transformers causal LM with a chat template as a LangChain chat model, decoding greedily (or sampling at
    `temperature` > 0 with `seed`). `batch()` generates all inputs as one padded batch on the model, where
    LangChain's default would run one call per input in threads (callbacks are not called in that path)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any
    tokenizer: Any
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8

    @property
    def _llm_type(self) -> str:
        return "local-transformers-chat"

    def _render(self, messages: Sequence[BaseMessage]) -> str:
        return self.tokenizer.apply_chat_template(_chat_turns(messages), tokenize=False, add_generation_prompt=True)

    def _replies(self, prompts: list[str], stop: Sequence[str] | None = None) -> list[str]:
        replies = generate(
            self.model,
            self.tokenizer,
            prompts,
            self.max_new_tokens,
            temperature=self.temperature,
            seed=self.seed,
            batch_size=self.batch_size,
        )
        return [_cut(r[0], stop) for r in replies]

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        text = self._replies([self._render(messages)], stop)[0]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def batch(
        self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any
    ) -> list[AIMessage]:
        if not inputs:
            return []
        prompts = [self._render(self._convert_input(x).to_messages()) for x in inputs]
        return [AIMessage(content=text) for text in self._replies(prompts, kwargs.get("stop"))]


# ------------------------------------------------------------------------------------------------- RAG chains

RAG_SYSTEM = (
    "Answer the question using only the context. Reply with the answer in a few words. If the context does "
    "not contain the answer, reply: I don't know."
)
CLOSED_BOOK_SYSTEM = "Answer the question about the course in a few words. If you do not know, reply: I don't know."
RAG_PROMPT = ChatPromptTemplate.from_messages(
    [("system", RAG_SYSTEM), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)
CLOSED_BOOK_PROMPT = ChatPromptTemplate.from_messages([("system", CLOSED_BOOK_SYSTEM), ("human", "{question}")])


def format_documents(docs: Sequence[Document]) -> str:
    """Retrieved chunks as numbered context blocks, each naming its source file."""
    return "\n\n".join(f"[{i}] ({d.metadata.get('source', '?')}) {d.page_content}" for i, d in enumerate(docs, 1))


def rag_chain(retriever: Runnable, chat_model: BaseChatModel) -> Runnable:
    """question -> {"answer", "context"}: retrieve, put the chunks in the prompt, answer (LangChain's expression
    language; `context` is the list of retrieved Documents, kept for checking the answer against it)."""
    answer = (
        RunnablePassthrough.assign(context=lambda x: format_documents(x["context"]))
        | RAG_PROMPT
        | chat_model
        | StrOutputParser()
    )
    return {"context": retriever, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=answer)


def closed_book_chain(chat_model: BaseChatModel) -> Runnable:
    """question -> answer from the model's own weights, same model and decoding, no retrieval: the baseline."""
    return {"question": RunnablePassthrough()} | CLOSED_BOOK_PROMPT | chat_model | StrOutputParser()


# ------------------------------------------------------------------------------------------------------- tools

_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** and parentheses, without `eval`: the
    expression is parsed with `ast` and only those nodes are computed. Exponents above 100 and numbers above
    1e100 are refused. Raises ValueError with the reason for anything else (names, calls, division by zero)."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**").replace(",", "")
    if not text or len(text) > 200:
        raise ValueError("give an arithmetic expression of 1-200 characters, e.g. 17 * 23")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from err

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError(f"exponent {right} is too large (at most 100)")
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
                raise ValueError("division by zero")
            result = _OPERATORS[type(node.op)](left, right)
            if isinstance(result, complex) or abs(result) > 1e100:
                raise ValueError("the result is not a real number below 1e100")
            return result
        raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, not {ast.unparse(node)!r}")

    result = value(tree.body)
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError("the result is not finite")
    return result


def format_number(x: float) -> str:
    """An integer-valued result without a decimal point, others to 6 significant digits."""
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def calculator_tool() -> BaseTool:
    """The calculator as a LangChain tool (name `calculator`, one string argument)."""

    @tool("calculator")
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression such as 17 * 23 or (4 + 6) / 2."""
        return format_number(calculate(expression))

    return calculator


def search_tool(store: VectorStore, k: int = 2, max_words: int = 80) -> BaseTool:
    """Search over `store` as a LangChain tool (name `search`): the top `k` chunks, each cut to `max_words` words
    so that the observation fits a small model's context."""

    @tool("search")
    def search(query: str) -> str:
        """Search the course documentation and return the most relevant passages."""
        docs = store.similarity_search(query, k=k)
        return "\n".join(f"- {' '.join(d.page_content.split()[:max_words])}" for d in docs)

    return search


# ------------------------------------------------------------------------------------------ parsing tool calls

#: Keys a model may use for the tool's name and for its argument in a JSON call.
NAME_KEYS = ("tool", "name", "action", "function", "tool_name")
ARGUMENT_KEYS = ("input", "argument", "arguments", "args", "query", "expression", "action_input", "parameters")


@dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: the tool's name, its one string argument, and which rule recognised it (`json`,
    `json-repaired`, `react` or `function`), so a run can count how often a lenient rule was needed."""

    name: str
    argument: str
    rule: str


def _json_objects(text: str) -> Iterable[str]:
    """Candidate JSON objects in `text`: each balanced {...} span, and an unclosed one closed."""
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                yield text[start : end + 1]
                break
        else:
            yield text[start:] + "}" * depth


def _repair(candidate: str) -> str:
    """Common slips of small models: single quotes, trailing commas, unquoted keys, Python's True/None."""
    fixed = re.sub(r"(?<![\w\"])'([^']*)'", r'"\1"', candidate)
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)
    fixed = re.sub(r"([{,]\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', fixed)
    return fixed.replace("None", "null").replace("True", "true").replace("False", "false")


def _from_mapping(data: Any, names: Sequence[str]) -> tuple[str, str] | None:
    if not isinstance(data, dict):
        return None
    name = next((str(data[k]) for k in NAME_KEYS if k in data), None)
    if name is None or name.strip().lower() not in names:
        return None
    argument = next((data[k] for k in ARGUMENT_KEYS if k in data), "")
    if isinstance(argument, dict):  # {"arguments": {"expression": "2+2"}}
        argument = next(iter(argument.values()), "") if len(argument) == 1 else json.dumps(argument)
    return name.strip().lower(), str(argument).strip()


def parse_tool_call(text: str, tool_names: Sequence[str]) -> ToolCall | None:
    """The first call of a known tool in a model's reply, or None.

    Tried in order: a JSON object with a name key and an argument key (`{"tool": "calculator", "input": "2+2"}`,
    also inside code fences); the same after repairing common slips (single quotes, trailing commas, unquoted
    keys, a missing closing brace); ReAct lines (`Action: calculator` / `Action Input: 2+2`); a function call
    (`calculator("2+2")` or `calculator(2+2)`). Unknown tool names are ignored, not guessed."""
    names = [n.lower() for n in tool_names]
    if not names:
        raise ValueError("need the names of the tools the model may call")
    for candidate in _json_objects(text):
        for rule, source in (("json", candidate), ("json-repaired", _repair(candidate))):
            try:
                found = _from_mapping(json.loads(source), names)
            except json.JSONDecodeError:
                continue
            if found:
                return ToolCall(found[0], found[1], rule)
    alternatives = "|".join(re.escape(n) for n in names)
    react = re.search(rf"action\s*:\s*[`*\"']*({alternatives})[`*\"']*\s*\n+\s*action[ _]input\s*:\s*(.+)", text, re.I)
    if react:
        return ToolCall(react.group(1).lower(), react.group(2).strip().strip("`\"'"), "react")
    function = re.search(rf"\b({alternatives})\s*\(\s*(.*?)\s*\)\s*$", text, re.I | re.M)
    if function:
        argument = re.sub(r"^\w+\s*=\s*", "", function.group(2)).strip().strip("\"'")
        return ToolCall(function.group(1).lower(), argument, "function")
    return None


def parse_final_answer(text: str) -> str | None:
    """The text after the last `Final Answer:` (any case), or None when the reply has none."""
    found = re.findall(r"final\s+answer\s*[:\-]\s*(.+)", text, re.I)
    return found[-1].strip().strip("*").strip() if found else None


# ---------------------------------------------------------------------------------------------------- the agent

AGENT_SYSTEM = """You can use tools. To use one, reply with only a JSON object, for example:
{{"tool": "calculator", "input": "12 * 7"}}
Tools:
{tools}
After you see the tool's result, reply: Final Answer: <the answer>"""


def agent_instructions(tools: Sequence[BaseTool]) -> str:
    """The system prompt: the call format with an example, and one line per tool (name: description)."""
    return AGENT_SYSTEM.format(tools="\n".join(f"- {t.name}: {t.description}" for t in tools))


@dataclass
class AgentRun:
    """What happened on one task: the final answer (None if the loop ended without one), each reply, tool call
    and observation in order, and the counts that explain a failure."""

    answer: str | None = None
    replies: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    unparsed: int = 0
    tool_errors: int = 0


def run_agent(chat_model: BaseChatModel, tools: Sequence[BaseTool], question: str, max_steps: int = 3) -> AgentRun:
    """The agent loop: ask, parse the reply; a tool call runs the tool and its result goes back as the next user
    turn; `Final Answer:` ends the loop; a reply with neither is counted and answered with a reminder of the
    format. A tool call wins over a final answer in the same reply (the model has not seen the result yet). A
    tool that raises returns its error message as the observation, so the model can correct itself."""
    if max_steps < 1 or not tools:
        raise ValueError("need max_steps >= 1 and at least one tool")
    by_name = {t.name.lower(): t for t in tools}
    messages: list[BaseMessage] = [SystemMessage(agent_instructions(tools)), HumanMessage(question)]
    run = AgentRun()
    for _ in range(max_steps):
        reply = chat_model.invoke(messages).text
        run.replies.append(reply)
        messages.append(AIMessage(reply))
        call = parse_tool_call(reply, list(by_name))
        if call is None:
            run.answer = parse_final_answer(reply)
            if run.answer is not None:
                return run
            run.unparsed += 1
            messages.append(
                HumanMessage(
                    'Reply with a JSON tool call such as {"tool": "calculator", "input": "2+2"}, '
                    "or with: Final Answer: <the answer>"
                )
            )
            continue
        try:
            observation = str(by_name[call.name].invoke(call.argument))
        except Exception as err:  # any tool failure goes back to the model as text
            observation, run.tool_errors = f"error: {err}", run.tool_errors + 1
        run.calls.append(call)
        run.observations.append(observation)
        messages.append(HumanMessage(f"Tool result: {observation}"))
    return run
