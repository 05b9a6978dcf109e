"""Haystacks: the text the needles hide in, as a stream of sentences per round.

A haystack is either text (a PG-19 style JSONL file with one `{"text": ...}` per line, a folder of
`.txt` files, or stdin, read by `read_haystack`) split into sentences, or a built-in generator that needs
no download:

- `prose` (the default): English-like sentences made from a small vocabulary and sentence templates
  written for this project (so lwm can ship them), seeded per round.
- `noise`: RULER's filler, "The grass is green. The sky is blue. The sun is yellow. Here we go. There and
  back again." repeated (retrieval in text that carries no information).
- `needles`: distractor needles, "The special magic {word} number is: {7 digits}." with made-up
  lower-case keys, which never equal a task's keys (cities are capitalised; other keys are checked).

Each round reads a different stretch: text haystacks start at a sentence chosen from the seed and the
round and wrap around at the end; generators are seeded by the seed and the round.

The made-up words are here too: `pseudo_word` (the `needles` haystack's and `multiquery`'s keys) and
`distinct_words` (the word lists of `cwe` and `fwe`, which need no haystack).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Iterator

from lwm_core.errors import LWMError
from lwm_core.needle.config import BUILTIN_HAYSTACKS
from lwm_core.text import decode_utf8

# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
# Longer "sentences" (text without punctuation) are cut at whitespace, so that lengths fit finely.
_MAX_SENTENCE_CHARS = 400

NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")


@dataclass(frozen=True)
class Haystack:
    """A haystack: `name` (a built-in name, or the path it was read from), `digest` (what rows record to
    identify its text) and, for text haystacks, its sentences."""

    name: str
    digest: str
    sentences: tuple[str, ...] = field(default=(), repr=False)

    def stream(self, seed: int, round: int) -> Iterator[str]:
        """Endless sentences of round `round`: the same for the same (seed, round), whatever is asked
        later, so any prefix of it is reproducible."""
        rng = random.Random(f"{seed}:haystack:{self.name if self.name in BUILTIN_HAYSTACKS else ''}:{round}")
        if self.name == "noise":
            while True:
                yield from NOISE
        if self.name == "prose":
            while True:
                yield _prose_sentence(rng)
        if self.name == "needles":
            while True:
                yield _distractor(rng)
        start = rng.randrange(len(self.sentences))
        while True:
            yield from self.sentences[start:]
            start = 0


def builtin(name: str) -> Haystack:
    if name not in BUILTIN_HAYSTACKS:
        raise LWMError(f"{name!r} is not a built-in haystack ({', '.join(BUILTIN_HAYSTACKS)})")
    # Built-ins are code: their version is their identity (bump it when their text changes).
    return Haystack(name=name, digest=f"builtin:{name}:v1")


def from_text(name: str, texts: list[str]) -> Haystack:
    """A haystack of `texts` (documents, in order), split into sentences; refused when empty."""
    sentences: list[str] = []
    for text in texts:
        for sentence in _SENTENCE_END.split(text):
            sentences.extend(_cut(" ".join(sentence.split())))
    if not sentences:
        raise LWMError(f"haystack {name} has no text; give a file with text in it")
    digest = hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()[:16]
    return Haystack(name=name, digest=f"sha256:{digest}", sentences=tuple(sentences))


def _cut(sentence: str) -> list[str]:
    if len(sentence) <= _MAX_SENTENCE_CHARS:
        return [sentence] if sentence else []
    words, pieces, piece = sentence.split(" "), [], []
    size = 0
    for word in words:
        if piece and size + len(word) > _MAX_SENTENCE_CHARS:
            pieces.append(" ".join(piece))
            piece, size = [], 0
        piece.append(word)
        size += len(word) + 1
    pieces.append(" ".join(piece))
    return pieces


def read_haystack(spec: str) -> Haystack:
    """`--haystack`: a built-in name, a JSONL file (`{"text": ...}` per line), a `.txt` file or a folder
    of `.txt` files (read in name order). Stdin is read by the CLI and given to `from_text`."""
    if spec in BUILTIN_HAYSTACKS:
        return builtin(spec)
    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if n.endswith(".txt"))
        if not names:
            raise LWMError(f"haystack folder {spec} has no .txt files; put the haystack text in .txt files there")
        return from_text(spec, [_read(os.path.join(spec, n)) for n in names])
    if not os.path.exists(spec):
        raise LWMError(f"haystack {spec} does not exist; give a .jsonl or .txt file, a folder of .txt files, - "
                       f"for stdin, or one of {', '.join(BUILTIN_HAYSTACKS)}")
    text = _read(spec)
    if not spec.endswith(".jsonl"):
        return from_text(spec, [text])
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LWMError(f"haystack {spec} line {number} is not JSON ({e.msg}); write one {{\"text\": ...}} "
                           f"object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise LWMError(f"haystack {spec} line {number} has no \"text\" string; write one {{\"text\": ...}} "
                           f"object per line")
        texts.append(record["text"])
    return from_text(spec, texts)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LWMError(f"cannot read haystack {path}: {e.strerror or e}") from None
    return decode_utf8(data, path)


# ----------------------------------------------------------------------------------- built-in prose
# A small world of words and sentence shapes, written for lwm. The sentences are grammatical and varied
# enough that a model reads them as ordinary text, and they hold no numbers, so no sentence can be taken
# for a needle.

_WORDS = {
    "person": ["the miller", "the old sailor", "a young clerk", "the baker", "my neighbour", "the teacher",
               "a travelling painter", "the gardener", "the ferryman", "her cousin", "the innkeeper",
               "a quiet student", "the shepherd", "the clockmaker", "his sister", "the carpenter"],
    "place": ["the harbour", "the valley", "the market square", "the library", "the orchard", "the mill",
              "the bridge", "the northern road", "the chapel", "the meadow", "the workshop", "the station",
              "the lighthouse", "the kitchen garden", "the river bank", "the upper field"],
    "thing": ["a letter", "the lantern", "a basket of apples", "an old map", "the brass key", "a wool coat",
              "the wooden boat", "a bundle of reeds", "the blue jug", "a loaf of bread", "the ledger",
              "a pair of boots", "the fishing net", "a small bell", "the kettle", "a folded quilt"],
    "verb": ["carried", "mended", "found", "painted", "counted", "sold", "borrowed", "cleaned", "wrapped",
             "forgot", "polished", "returned", "studied", "hid", "weighed", "admired"],
    "time": ["in the morning", "before the rain", "after supper", "at dawn", "late in the evening",
             "during the fair", "on the coldest day", "when the bells rang", "by lamplight", "at noon",
             "in early spring", "as the tide turned", "after the long winter", "before the harvest"],
    "adj": ["quiet", "bright", "narrow", "crowded", "silent", "warm", "windy", "green", "grey", "busy",
            "peaceful", "golden", "muddy", "ancient", "gentle", "damp"],
    "feeling": ["glad", "tired", "curious", "hopeful", "uneasy", "content", "surprised", "patient",
                "restless", "grateful"],
}
_TEMPLATES = [
    "{person} {verb} {thing} {time}.",
    "{Person} {verb} {thing} near {place}.",
    "{Time}, {person} walked slowly to {place}.",
    "The air around {place} was {adj} {time}.",
    "{Person} felt {feeling} and looked towards {place}.",
    "Nobody knew why {person} had {verb} {thing}.",
    "It was a {adj} day, and {place} seemed {adj2} as well.",
    "{Person} said that {thing} belonged in {place}.",
    "Later, {person} and {person2} met at {place}.",
    "{Time}, {place} grew {adj} and still.",
    "Some people say {person} once {verb} {thing} there.",
    "From {place} one could see {place2} and the hills beyond.",
    "{Person} was {feeling}, for {thing} had been {verb} at last.",
    "The road from {place} to {place2} was {adj} {time}.",
    "{Person} kept {thing} by the door of {place}.",
    "Was it {person} who {verb} {thing}?",
    "Everyone at {place} remembered the {adj} winter.",
    "{Person} hummed a tune while the kettle warmed.",
]


def _prose_sentence(rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES)
    values = {key: rng.choice(words) for key, words in _WORDS.items()}
    values.update(person2=rng.choice(_WORDS["person"]), place2=rng.choice(_WORDS["place"]),
                  adj2=rng.choice(_WORDS["adj"]))
    values.update({key.capitalize(): value[:1].upper() + value[1:] for key, value in list(values.items())})
    sentence = template.format(**values)
    return sentence[:1].upper() + sentence[1:]


_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "he", "ja", "wu"]


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    """A made-up lower-case word (`kalomi`): keys that no real text or city list contains."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables))


# The list tasks (cwe, fwe) need many distinct words of one length: three of these 85 syllables make
# 614125 (`pseudo_word`'s 16 make 4096, too few for a 1M-token list). One length, so that no word of a
# list contains another and RULER's substring scoring finds an answer only where that word was said.
WORD_SYLLABLES = tuple(c + v for c in "bdfghjklmnprstvwz" for v in "aeiou")


def distinct_words(rng: random.Random) -> Iterator[str]:
    """Made-up words of three syllables (`kalomi`), each new, in an order drawn from `rng`: any prefix
    is the same however many are read later."""
    n = len(WORD_SYLLABLES)
    seen: set[int] = set()
    while len(seen) < n**3:
        index = rng.randrange(n**3)
        if index not in seen:
            seen.add(index)
            yield "".join(WORD_SYLLABLES[index // n**p % n] for p in range(3))
    raise LWMError(f"the {n**3} made-up words of the list tasks are used up; use a shorter --ctx")


def _distractor(rng: random.Random) -> str:
    return f"The special magic {pseudo_word(rng)} number is: {rng.randint(1_000_000, 9_999_999)}."
