"""An offline, deterministic English corpus for training and evaluating SAEs (no downloads).

Nothing can be downloaded where conceptkit runs, so the corpus is built from text that is
already on the machine, in a fixed order:

* ``pydoc``    Python's own reference documentation (``pydoc_data.topics``: the language
               reference and library topics, about 0.45 MB of prose);
* ``stdlib``   docstrings of the standard library's modules, classes and functions (parsed with
               ``ast``, never imported);
* ``docstrings`` docstrings of the third-party packages installed beside conceptkit (each
               top-level package contributes at most 150,000 characters, for variety);
* ``packages`` the long descriptions (README text) in the metadata of every installed
               distribution, plus ``.md``/``.rst`` files shipped inside site-packages;
* ``project``  conceptkit's own texts that ship with it: the sentences of its concept sets.

Each text is split into paragraphs; a paragraph is kept when it reads as prose (mostly letters,
not code, not a table, at least 40 characters) and is not a duplicate. Documents are assigned
to the held-out split by a hash of their name, so the split does not move when other documents
come or go. The corpus depends on the installed Python and packages; its ``fingerprint`` (a
sha256 over every kept paragraph in order) is recorded in the provenance of every SAE trained
on it, and :func:`stats` reports its size and variety.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import re
import sys
import sysconfig
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

SOURCES = ("pydoc", "stdlib", "docstrings", "packages", "project")
PER_PACKAGE_CHARS = 150_000
HELD_OUT_PERCENT = 15
_CODE_CHARS = set("{}[]();=<>_|\\`$#@*")
_WS = re.compile(r"[ \t\r\f\v]+")


@dataclass(frozen=True)
class Document:
    source: str
    name: str
    text: str

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(f"{self.source}/{self.name}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


@dataclass
class Corpus:
    documents: list[Document]
    sources: tuple[str, ...]
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, which: str) -> list[Document]:
        """``train`` or ``held_out`` documents (a stable, name-hashed 85/15 split)."""
        if which not in ("train", "held_out"):
            from conceptkit.errors import InputError

            raise InputError(f"split must be 'train' or 'held_out', got {which!r}")
        return [d for d in self.documents if d.held_out == (which == "held_out")]

    def texts(self, which: str = "train") -> list[str]:
        return [d.text for d in self.split(which)]


# -- prose filter ---------------------------------------------------------------------------------
def _is_prose(par: str) -> bool:
    if len(par) < 40 or len(par) > 4000:
        return False
    lines = par.splitlines()
    if any(ln.lstrip().startswith((">>>", "...", "$ ", "pip ", "import ", "from ", "def ", "class ", "|", "+--", ".. ", ":param", ":return")) for ln in lines):
        return False
    letters = sum(c.isalpha() for c in par)
    spaces = par.count(" ")
    code = sum(c in _CODE_CHARS for c in par)
    if letters < 0.7 * len(par) - spaces or code > 0.03 * len(par):
        return False
    words = par.split()
    if len(words) < 8 or sum(w[:1].islower() for w in words) < 0.5 * len(words):
        return False
    return par.rstrip()[-1:] in ".!?:)\"'"


def _paragraphs(text: str) -> Iterator[str]:
    text = text.replace("\r\n", "\n")
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines()]
        lines = [ln.lstrip("#*-> ").strip() if ln.startswith(("#", "* ", "- ", "> ")) else ln for ln in lines]
        par = _WS.sub(" ", " ".join(ln for ln in lines if ln)).strip()
        par = re.sub(r"`+", "", par)
        par = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", par)  # markdown links -> text
        if _is_prose(par):
            yield par


# -- sources ------------------------------------------------------------------------------------------
def _pydoc() -> Iterator[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Pythons
        return
    for name in sorted(topics):
        yield name, topics[name]


def _docstrings_of(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
    return "\n\n".join(dict.fromkeys(docs))


def _stdlib() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip", "distutils")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or "tests" in rel.parts:
            continue
        text = _docstrings_of(path)
        if text:
            yield str(rel), text


def _site_docstrings() -> Iterator[tuple[str, str]]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    own = {"conceptkit", "_pytest", "pip", "setuptools", "pkg_resources", "_distutils_hack"}
    for top in sorted(p for p in purelib.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if top.name in own or top.name.startswith(("conceptkit", "_")):
            continue
        budget = PER_PACKAGE_CHARS
        for path in sorted(top.rglob("*.py")):
            if "tests" in path.parts or "test" in path.parts:
                continue
            text = _docstrings_of(path)
            if not text:
                continue
            kept = "\n\n".join(_paragraphs(text))
            if kept:
                yield str(path.relative_to(purelib)), kept
                budget -= len(kept)
                if budget <= 0:
                    break


def _packages() -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    dists = sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for dist in dists:
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in seen:
            continue
        seen.add(name)
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if body:
            yield f"{name}/METADATA", body
    purelib = Path(sysconfig.get_paths()["purelib"])
    for ext in ("md", "rst"):
        for path in sorted(purelib.rglob(f"*.{ext}")):
            try:
                yield str(path.relative_to(purelib)), path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue


def _project() -> Iterator[tuple[str, str]]:
    pkg = Path(__file__).resolve().parents[1]
    for path in sorted((pkg / "concepts" / "data").glob("*.txt")):
        # one sentence a line: join into paragraphs of 8 sentences so they pass as prose
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        yield f"concepts/{path.name}", "\n\n".join(" ".join(lines[i : i + 8]) for i in range(0, len(lines), 8))


_READERS = {"pydoc": _pydoc, "stdlib": _stdlib, "docstrings": _site_docstrings, "packages": _packages, "project": _project}


def installation_key(sources: Sequence[str] = SOURCES) -> str:
    """A cheap key for "the same installation": Python, every distribution's version, the sources."""
    dists = sorted({f"{(d.metadata.get('Name') or '').lower()}=={d.version}" for d in importlib.metadata.distributions()})
    raw = json.dumps([sys.version, dists, list(sources)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def build(sources: tuple[str, ...] = SOURCES, cache: bool = True) -> Corpus:
    """The corpus from ``sources``, cached per installation in the user cache (rebuilding it
    parses every docstring, about a minute and a half on two cores)."""
    sources = tuple(sources)
    if not cache:
        return _build(sources)
    from conceptkit.models import cache_dir

    path = cache_dir() / "sae" / f"corpus-{installation_key(sources)}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            docs = [Document(*d) for d in data["documents"]]
            return Corpus(docs, tuple(data["sources"]), data["fingerprint"], data["info"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is rebuilt
    corpus = _build(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary file per writer: two processes building the corpus at once (pytest-xdist, Ray
    # workers) each rename a complete file into place; the last rename wins and both are identical.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as tmp:
        json.dump({"documents": [[d.source, d.name, d.text] for d in corpus.documents],
                   "sources": list(corpus.sources), "fingerprint": corpus.fingerprint, "info": corpus.info}, tmp)
    Path(tmp.name).replace(path)
    return corpus


def cached(fingerprint: str) -> Corpus | None:
    """A corpus built earlier on this machine with this fingerprint (or a unique prefix of it), if
    its cache file is still there: evaluating an SAE on *its* held-out split even after packages
    were installed or upgraded (which changes what :func:`build` returns)."""
    from conceptkit.models import cache_dir

    folder = cache_dir() / "sae"
    for path in sorted(folder.glob("corpus-*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("fingerprint", "")).startswith(fingerprint):
            return Corpus([Document(*d) for d in data["documents"]], tuple(data["sources"]), data["fingerprint"], data["info"])
    return None


@lru_cache(maxsize=4)
def _build(sources: tuple[str, ...] = SOURCES) -> Corpus:
    """Build the corpus from ``sources`` (deterministic for a given installation)."""
    unknown = [s for s in sources if s not in _READERS]
    if unknown:
        from conceptkit.errors import UnknownNameError

        raise UnknownNameError("corpus source", unknown[0], _READERS)
    h = hashlib.sha256()
    seen: set[str] = set()
    documents: list[Document] = []
    for source in sources:
        for name, raw in _READERS[source]():
            kept = []
            for par in _paragraphs(raw):
                key = hashlib.sha1(par.lower().encode()).hexdigest()
                if key in seen:
                    continue
                seen.add(key)
                kept.append(par)
            if kept:
                doc = Document(source, name, "\n\n".join(kept))
                documents.append(doc)
                h.update(f"{source}/{name}\0{doc.text}\0".encode())
    info = {"python": sys.version.split()[0], "sources": list(sources)}
    return Corpus(documents, tuple(sources), h.hexdigest(), info)


def stats(corpus: Corpus, tokenizer: Any = None) -> dict[str, Any]:
    """Size and variety: documents, paragraphs, characters, words, distinct words, per source and split."""
    out: dict[str, Any] = {"fingerprint": corpus.fingerprint, "sources": {}}
    total_words: Counter[str] = Counter()
    for source in corpus.sources:
        docs = [d for d in corpus.documents if d.source == source]
        words = [w.lower() for d in docs for w in re.findall(r"[A-Za-z]+", d.text)]
        total_words.update(words)
        out["sources"][source] = {
            "documents": len(docs),
            "paragraphs": sum(d.text.count("\n\n") + 1 for d in docs),
            "characters": sum(len(d.text) for d in docs),
            "words": len(words),
        }
    out["documents"] = len(corpus.documents)
    out["characters"] = sum(len(d.text) for d in corpus.documents)
    out["words"] = sum(total_words.values())
    out["distinct_words"] = len(total_words)
    out["type_token_ratio_first_100k_words"] = _ttr(corpus)
    for split in ("train", "held_out"):
        out[f"{split}_characters"] = sum(len(d.text) for d in corpus.split(split))
    if tokenizer is not None:
        for split in ("train", "held_out"):
            out[f"{split}_tokens"] = sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in corpus.split(split))
    return out


def _ttr(corpus: Corpus) -> float:
    words: list[str] = []
    for d in corpus.documents:
        words.extend(w.lower() for w in re.findall(r"[A-Za-z]+", d.text))
        if len(words) >= 100_000:
            break
    words = words[:100_000]
    return round(len(set(words)) / max(len(words), 1), 4)


def token_windows(
    corpus: Corpus,
    tokenizer: Any,
    split: str = "train",
    context: int = 128,
    max_tokens: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Token ids ``[n, context]`` cut from the split's documents, shuffled with ``seed``.

    Documents are tokenised without special tokens and concatenated (a newline between
    documents), then cut into full windows; the tokenizer's own prefix tokens (BOS, if it adds
    one) start every window, as in normal use. Returns ``{"input_ids", "attention_mask"}``.
    """
    import torch

    prefix = _prefix_ids(tokenizer)
    body = context - len(prefix)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for doc in corpus.split(split):
        stream.extend(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        stream.extend(sep)
    n = len(stream) // body
    windows = torch.tensor(stream[: n * body], dtype=torch.long).reshape(n, body)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    windows = windows[order]
    if prefix:
        windows = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n, -1), windows], 1)
    if max_tokens is not None:
        windows = windows[: max(1, -(-max_tokens // context))]
    return {"input_ids": windows, "attention_mask": torch.ones_like(windows)}


def _prefix_ids(tokenizer: Any) -> list[int]:
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[-len(plain) :] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def describe(corpus: Corpus, sample: Sequence[Document] | None = None) -> str:
    st = stats(corpus)
    parts = [f"{s}: {v['documents']} docs, {v['characters'] / 1e6:.2f} MB" for s, v in st["sources"].items()]
    return f"corpus {corpus.fingerprint[:12]}: " + "; ".join(parts) + f"; {st['distinct_words']} distinct words"
