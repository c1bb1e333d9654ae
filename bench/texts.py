"""Text for the benchmarks, built from what ships with Python: nothing is downloaded.

Sentence sets (MiniLM), each a deterministic list of prose sentences of 8-60 words:

- ``langref``: the language reference prose ``help()`` shows (``pydoc_data.topics``); every fourth topic
  (sorted) is held out as the *same-source* evaluation set;
- ``stdlib-<family>``: docstrings of standard-library modules by topic (:data:`FAMILIES`);
- ``everyday``: hand-written everyday sentences and seeded template sentences;
- ``legal``: licence texts (Python's LICENSE.txt and /usr/share/common-licenses where present).

Calibration draws from ``langref`` (``mix="langref"``) or round-robin from it and four stdlib
families (``mix="broad"``: text, os, data, concurrency). The *cross-source* evaluation set is a
round-robin of everyday sentences, the math and networking docstrings and licence texts: no source
and no topic in common with either calibration mix.

Documents (the causal LM, :mod:`bench.lm`): the standard library's own ``.py`` sources, split by
top-level module (``email/...`` is one unit) with a seeded hash into training (~85 %), same-source
calibration (~5 %) and evaluation (~10 %) units; the cross-source calibration documents are the
language reference topics, prose the LM never trains on.

Everything is a pure function of its arguments and the Python version (the stdlib text).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import random
import re
import sys
import sysconfig
import warnings
from pathlib import Path

MIN_WORDS, MAX_WORDS = 8, 60
FAMILIES: dict[str, tuple[str, ...]] = {
    "net": ("socket", "ssl", "http.client", "http.server", "http.cookies", "urllib.request", "urllib.parse",
            "smtplib", "ftplib", "poplib", "imaplib", "email.message", "email.utils", "socketserver",
            "ipaddress", "xmlrpc.client", "mailbox", "wsgiref.simple_server"),
    "math": ("math", "cmath", "statistics", "decimal", "fractions", "numbers", "random", "_pydecimal",
             "colorsys", "_pydatetime", "calendar", "datetime"),
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "codecs", "html.parser", "stringprep",
             "locale", "gettext", "shlex", "rlcompleter"),
    "os": ("os", "pathlib", "shutil", "tempfile", "glob", "fnmatch", "filecmp", "stat", "io", "_pyio",
           "tarfile", "zipfile", "gzip", "bz2", "lzma"),
    "data": ("json", "csv", "pickle", "sqlite3", "configparser", "plistlib", "shelve", "copy",
             "collections", "heapq", "bisect", "enum", "dataclasses"),
    "concurrency": ("threading", "multiprocessing.pool", "concurrent.futures", "asyncio.tasks",
                    "asyncio.queues", "queue", "sched", "subprocess", "selectors", "signal"),
}
CROSS = ("everyday", "stdlib-math", "stdlib-net", "legal")
MIXES = {"langref": ("langref",),
         "broad": ("langref", "stdlib-text", "stdlib-os", "stdlib-data", "stdlib-concurrency")}

SUBJECTS = ["The old librarian", "A young engineer", "My neighbour's dog", "The city council", "Our team",
            "The local baker", "A famous singer", "The school principal", "My sister", "The farmer"]
ACTIONS = ["painted the fence", "wrote a long letter", "won the chess tournament", "planted tomatoes",
           "repaired the bicycle", "baked bread for the whole street", "read three novels",
           "lost the keys at the market", "fixed the leaking roof", "adopted a stray cat"]
TIMES = ["yesterday", "last winter", "on Sunday morning", "after the storm", "during the meeting",
         "before the holidays", "late at night", "in the spring", "every weekend", "for the first time"]
EVERYDAY = [
    "How do I reset my router when the lights keep blinking?",
    "The stock market fell sharply after the interest rate announcement.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She plays the violin in a small jazz band downtown.", "Is it safe to eat raw cookie dough?",
    "The museum reopened with a new exhibition of Roman coins.",
    "Quantum computers may break some of today's encryption schemes.",
    "Our flight was delayed by three hours because of fog.",
    "He prefers tea without sugar and with a slice of lemon.",
    "The recipe calls for two cups of flour and one egg.",
    "Volcanoes release gases that can change the climate for years.",
    "Please send me the report before Friday afternoon.", "The children built a snowman with a carrot nose.",
    "A balanced diet includes vegetables, grains and protein.",
    "The new phone has a better camera but a weaker battery.",
    "Whales communicate with songs that travel for miles underwater.",
    "The court postponed the trial until next month.", "I can't find my glasses anywhere in the apartment.",
    "The bridge was closed for repairs after the earthquake.",
    "Learning a second language improves memory in older adults.",
    "The team celebrated their victory with pizza and music.", "Heavy rain flooded several streets in the old town.",
    "What is the capital city of Australia?", "The software update fixed a bug that drained the battery.",
    "Bees are essential for pollinating many food crops.",
    "The novel tells the story of a family across three generations.",
    "Turn left at the bakery and walk two blocks north.", "Electric cars are becoming cheaper to buy and to run.",
    "The teacher explained fractions using slices of pie.",
    "My grandfather collected stamps from over fifty countries.", "The hospital hired twenty new nurses this year.",
    "A thunderstorm knocked out power across the valley.",
    "The company reported record profits in the third quarter.", "Where can I buy fresh fish near the harbour?",
    "The telescope captured images of a distant galaxy.", "They hiked to the summit and watched the sunrise.",
    "Regular exercise lowers the risk of heart disease.", "The printer is out of ink again.",
    "The cat knocked a glass of water off the table.",
    "Solar panels work even on cloudy days, just less efficiently.",
    "The festival features food from more than thirty countries.",
    "He apologized for being late to the interview.", "The river froze solid during the coldest week of the year.",
    "Can you recommend a good book about ancient Egypt?",
    "The police are searching for a missing hiker in the mountains.",
    "Vaccines train the immune system to recognise a virus.",
    "The bakery on the corner sells the best croissants in town.",
    "Our internet connection drops every evening around eight.",
    "The architect designed a library made entirely of wood.", "Prices of fresh vegetables rose after the drought.",
    "The students presented their robot at the science fair.",
    "I need to renew my passport before the trip to Japan.", "The orchestra performed Beethoven's ninth symphony.",
    "Wind turbines now supply a fifth of the country's electricity.",
    "The kitten slept all afternoon in a sunny window.",
    "The government announced new rules for online privacy.", "She finished the crossword puzzle in ten minutes.",
    "The mountain village has no road, only a footpath.", "Antibiotics do not work against viral infections.",
    "The restaurant was fully booked for Valentine's Day.",
]

_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
_CODE = re.compile(r"::=|>>>|[{}\[\]<>=|\\`#@$]|\.\.\.|^\W")


def _prose(sentence: str) -> str | None:
    """The sentence, tidied, when it is prose of MIN..MAX words; else None."""
    text = re.sub(r"\*+(\w[^*]*)\*+", r"\1", sentence)
    text = " ".join(text.replace("\u2019", "'").replace("\u201c", "").replace("\u201d", "").replace('"', "").split())
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or _CODE.search(text):
        return None
    letters = sum(c.isalpha() for c in text)
    if letters < 0.75 * len(text.replace(" ", "")) or not text[0].isupper() or text[-1] not in ".!?":
        return None
    return text


def sentences_of(text: str) -> list[str]:
    """Prose sentences of ``text``: paragraphs split on blank lines, indented (code) blocks dropped."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln for ln in paragraph.splitlines() if ln.strip() and not re.fullmatch(r"\s*[*=\-~^]+\s*", ln)]
        if not lines or lines[0].startswith("   "):
            continue
        for piece in _END.split(" ".join(ln.strip() for ln in lines)):
            sentence = _prose(piece)
            if sentence:
                out.append(sentence)
    return out


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def _langref(held_out: bool) -> list[str]:
    from pydoc_data.topics import topics
    keys = sorted(topics)
    kept = _unique(s for i, k in enumerate(keys) if i % 4 == 0 for s in sentences_of(topics[k]))
    if held_out:
        return kept
    taken = set(kept)  # a sentence repeated across topics stays on the held-out side only
    return _unique(s for i, k in enumerate(keys) if i % 4 != 0 for s in sentences_of(topics[k]) if s not in taken)


def _docstrings(name: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except Exception:  # not in this build (readline, some dbm backends, ...)
            return []
    docs = [inspect.getdoc(module) or ""]
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            docs += [inspect.getdoc(m) or "" for n, m in sorted(vars(obj).items()) if not n.startswith("_") and callable(m)]
    return docs


def _everyday() -> list[str]:
    rng = random.Random(0)
    made = sorted({f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(TIMES)}." for _ in range(400)})
    rng.shuffle(made)
    return _unique([s for s in EVERYDAY if len(s.split()) >= 5] + made[:200])


def _legal() -> list[str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [Path(sys.base_prefix) / "lib" / version / "LICENSE.txt"]
    paths += [Path("/usr/share/common-licenses") / n for n in ("Apache-2.0", "GPL-3", "LGPL-3", "MPL-2.0",
                                                               "GFDL-1.3", "Artistic", "BSD")]
    return _unique(sentences_of("\n\n".join(p.read_text(errors="ignore") for p in paths if p.is_file())))


@functools.lru_cache(maxsize=None)
def domain(name: str) -> tuple[str, ...]:
    """All sentences of one source: ``langref``, ``langref-heldout``, ``everyday``, ``legal``, ``stdlib-<family>``."""
    if name in ("langref", "langref-heldout"):
        return tuple(_langref(held_out=name.endswith("heldout")))
    if name == "everyday":
        return tuple(_everyday())
    if name == "legal":
        return tuple(_legal())
    if name.startswith("stdlib-") and name[7:] in FAMILIES:
        return tuple(_unique(s for module in FAMILIES[name[7:]] for d in _docstrings(module) for s in sentences_of(d)))
    raise ValueError(f"unknown text source {name!r}")


def _sample(pool: tuple[str, ...], n: int, seed: int) -> list[str]:
    items = list(pool)
    random.Random(seed).shuffle(items)
    return items[:n]


def _round_robin(sources: tuple[str, ...], n: int, seed: int) -> list[str]:
    """One sentence from each source in turn (a source that runs out drops from the turn)."""
    parts = [_sample(domain(s), n, seed) for s in sources]
    mixed = [part[i] for i in range(n) for part in parts if i < len(part)][:n]
    if len(mixed) < n:
        raise ValueError(f"the sources {sources} hold only {len(mixed)} sentences, {n} asked")
    return mixed


def calibration_sentences(n: int, seed: int = 0, mix: str = "broad") -> list[str]:
    """``n`` calibration sentences from :data:`MIXES` ``[mix]`` (never an evaluation source)."""
    return _round_robin(MIXES[mix], n, seed)


def evaluation_sentences(n: int, seed: int = 0, kind: str = "cross") -> list[str]:
    """``n`` evaluation sentences: ``cross`` (other sources and topics) or ``same`` (held-out langref topics)."""
    if kind == "same":
        return _sample(domain("langref-heldout"), n, seed + 1)
    if kind == "cross":
        return _round_robin(CROSS, n, seed + 1)
    raise ValueError(f"kind={kind!r} must be 'cross' or 'same'")


# ------------------------------------------------------------------------------------------ documents
_SKIP = {"test", "tests", "idle_test", "site-packages", "encodings", "pydoc_data", "lib2to3", "idlelib",
         "turtledemo", "ensurepip", "lib-dynload", "__pycache__", "__phello__"}


def _units() -> dict[str, list[Path]]:
    """Standard-library sources by top-level module or package."""
    root = Path(sysconfig.get_paths()["stdlib"])
    units: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        name = parts[0].removesuffix(".py")
        if _SKIP & set(parts[:-1]) or name in _SKIP or name.startswith(("_sysconfigdata", "config-")):
            continue
        units.setdefault(name, []).append(path)
    return units


def _bucket(name: str, seed: int) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2 ** 64


@functools.lru_cache(maxsize=4)
def documents(seed: int = 0) -> dict[str, tuple[str, ...]]:
    """``{"train", "calib_code", "eval_code", "calib_prose"}``: lists of documents (see the module docstring)."""
    out: dict[str, list[str]] = {"train": [], "calib_code": [], "eval_code": []}
    for name, paths in sorted(_units().items()):
        u = _bucket(name, seed)
        split = "eval_code" if u < 0.10 else "calib_code" if u < 0.15 else "train"
        out[split] += [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    from pydoc_data.topics import topics
    out["calib_prose"] = [f"{k}\n\n{topics[k]}" for k in sorted(topics)]
    return {k: tuple(v) for k, v in out.items()}
