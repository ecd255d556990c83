"""Corpus readers: stream (question, answer) pairs from the formats users have.

* TSV: ``question<TAB>answer`` per line (../shared/corpus/).
* The seed's two-file format: a folder holding ``question`` and ``answer`` files, or
  ``QFILE+AFILE``; line i of one answers line i of the other.
* chatterbot-corpus YAML: a ``.yml`` file, a folder of them, or ``chatterbot:chinese`` for the
  Chinese data of the installed ``chatterbot-corpus`` package. Each conversation
  ``[a, b, c]`` gives the pairs (a, b) and (b, c).
* ``xianliao:everyday``: the ~6,900 everyday exchanges shipped with the package (a TSV).

Readers yield ``(question, answer)`` or ``Bad(reason)``; nothing is dropped without a count.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bad:
    reason: str


Item = tuple[str, str] | Bad


class CorpusError(Exception):
    """A corpus argument that cannot be read at all (missing file, unknown format)."""


# ~6,900 everyday exchanges written for this project (greetings, feelings, plans, questions
# about the bot, reactions, and specific everyday situations: food, pets, chores, work, school,
# health, hobbies, family), several phrasings of each: with chatterbot-corpus's ~550
# mostly translated pairs, enough for a first bot to answer everyday messages from its reply
# index. Package data, so installed copies have it.
EVERYDAY_CORPUS = Path(__file__).with_name("data") / "everyday_zh.tsv"
# Corpora shipped with the package, by a name that works wherever it is installed.
SHIPPED = {"xianliao:everyday": EVERYDAY_CORPUS}
# What the reply index adds to the scores of a shipped corpus's answers unless the user's
# --offset says otherwise: they were written as answers for this bot, where a corpus's answer
# is whatever someone said next. Half a unit of question similarity at the served weight of
# 24 (3 was chosen beside a weight of 2; both by blind judging, bench/RESULTS.md section 31).
SHIPPED_OFFSETS = {EVERYDAY_CORPUS.resolve(): 12.0}


def resolve(spec: str) -> str:
    """A corpus argument as a path: the file behind a shipped corpus's name, else itself.
    The commands that take corpus arguments (prepare, index) resolve them first."""
    return str(SHIPPED[spec]) if spec in SHIPPED else spec


def is_shipped(path: str) -> bool:
    """Whether ``path`` (however spelt) is a corpus shipped with the package."""
    return Path(path).resolve() in SHIPPED_OFFSETS


def shipped_offsets(paths: list[str]) -> dict[str, float]:
    """The index's score offsets (by corpus name) of the shipped corpora among ``paths``, however
    the path is spelt."""
    found = {}
    for p in paths:
        if (offset := SHIPPED_OFFSETS.get(Path(p).resolve())) is not None:
            found[Path(p).stem] = offset
    return found


def chatterbot_dir(language: str = "chinese") -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        raise CorpusError(
            "the chatterbot-corpus package is not installed: pip install chatterbot-corpus"
        ) from None
    path = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not path.is_dir():
        raise CorpusError(f"chatterbot-corpus has no {language!r} data at {path}")
    return path


def _read_lines(path: Path) -> Iterator[str | Bad]:
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield Bad("not UTF-8")


def parse_tsv_line(raw: bytes) -> Item:
    """One raw line of a question<TAB>answer file (without its newline)."""
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return Bad("not UTF-8")
    if not line.strip():
        return Bad("blank line")
    fields = line.split("\t")
    if len(fields) != 2:
        return Bad(f"{len(fields)} fields instead of 2")
    return fields[0], fields[1]


def read_tsv(path: Path) -> Iterator[Item]:
    with open(path, "rb") as f:
        for raw in f:
            yield parse_tsv_line(raw.rstrip(b"\n"))


def is_tsv(spec: str) -> bool:
    """Whether ``spec`` is read as a question<TAB>answer file (so it can be split in blocks)."""
    path = Path(spec)
    return (
        not spec.startswith("chatterbot:")
        and path.is_file()
        and path.suffix not in (".yml", ".yaml")
    )


def read_two_files(qpath: Path, apath: Path) -> Iterator[Item]:
    sentinel = object()
    for q, a in itertools.zip_longest(_read_lines(qpath), _read_lines(apath), fillvalue=sentinel):
        if q is sentinel or a is sentinel:
            yield Bad("question and answer files differ in length")
        elif isinstance(q, Bad):
            yield q
        elif isinstance(a, Bad):
            yield a
        else:
            yield q, a


def read_yaml(path: Path) -> Iterator[Item]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: not a readable YAML file ({type(exc).__name__})") from None
    convs = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(convs, list):
        raise CorpusError(f"{path}: no 'conversations' list (not a chatterbot-corpus file)")
    for conv in convs:
        if not isinstance(conv, list) or len(conv) < 2:
            yield Bad("conversation with fewer than 2 turns")
            continue
        for q, a in itertools.pairwise(conv):
            if isinstance(q, str | int | float) and isinstance(a, str | int | float):
                yield str(q), str(a)
            else:
                yield Bad("conversation turn is not text")


def iter_corpus(spec: str) -> Iterator[Item]:
    """Pairs from one corpus argument (see the module docstring for what ``spec`` may be)."""
    if spec.startswith("chatterbot:"):
        for path in sorted(chatterbot_dir(spec.split(":", 1)[1] or "chinese").glob("*.yml")):
            yield from read_yaml(path)
        return
    if "+" in spec and not Path(spec).exists():
        qpath, apath = (Path(p) for p in spec.split("+", 1))
        for p in (qpath, apath):
            if not p.is_file():
                raise CorpusError(f"{p} does not exist")
        yield from read_two_files(qpath, apath)
        return
    path = Path(spec)
    if path.is_dir():
        if (path / "question").is_file() and (path / "answer").is_file():
            yield from read_two_files(path / "question", path / "answer")
            return
        ymls = sorted([*path.glob("*.yml"), *path.glob("*.yaml")])
        if not ymls:
            raise CorpusError(f"{path}: a folder with neither question/answer files nor *.yml")
        for p in ymls:
            yield from read_yaml(p)
        return
    if not path.is_file():
        raise CorpusError(f"{path} does not exist")
    if path.suffix in (".yml", ".yaml"):
        yield from read_yaml(path)
    else:
        yield from read_tsv(path)


def check_specs(specs: list[str]) -> None:
    """Fail fast, before any work, on a corpus argument that does not exist."""
    for spec in specs:
        if spec.startswith("chatterbot:"):
            chatterbot_dir(spec.split(":", 1)[1] or "chinese")
        elif "+" in spec and not Path(spec).exists():
            for p in spec.split("+", 1):
                if not Path(p).is_file():
                    raise CorpusError(f"{p} does not exist")
        elif not Path(spec).exists():
            raise CorpusError(f"{spec} does not exist")
