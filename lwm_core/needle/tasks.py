"""The tasks: what each row hides, what it asks, and the answers it accepts.

One small function per task takes the row's own `random.Random`, the config and the row's context length
and returns a `Task`.
`single` and `multi` are LWM's (its exact needle and question strings, docs/compatibility.md#prompts,
with the city list de-duplicated); the rest follow NVIDIA RULER's families, in our own words:

- `single`: one needle, "The special magic {city} number is: {7 digits}"; asks for that number.
- `multi`: `needles` such needles (distinct cities), asks for the numbers of the first `retrieve`.
- `multikey`: one needle asked among `needles - 1` distractors of the same form whose keys and values are
  UUID-like strings (RULER niah_multikey_3: the model must match a long key exactly).
- `multivalue`: `needles` needles with the same city and different numbers; asks for all of them.
- `multiquery`: `needles` needles with made-up capitalised keys; asks for every one's number.
- `vt`: variable tracking, a chain of `needles` assignments `VAR QWXYZ = 12345`, `VAR ABCDE = VAR QWXYZ`,
  ...; asks for every variable that holds the value.

`needles[0]` is the needle placed at the row's depth; the others are distractors (or, for `vt`, the rest
of the chain, in order after it) at seeded sentence boundaries.

Two tasks have no haystack and no needle: their context is a list of made-up words
(`haystack.distinct_words`), and the question asks which words it holds most often (RULER's
aggregation tasks):

- `cwe`: common word extraction, a numbered list `1. kalomi 2. ruvoze ...` in which 10 common words
  occur `common` times each and any number of rare words `rare` times each, shuffled; asks for the 10
  common words. The counts are RULER's, which follow the row's context: 30 and 3 from 4K tokens up, 6
  and 1 below (the 30-fold list alone would not fit). The list grows as RULER's does, by more rare words.
- `fwe`: frequent word extraction, a coded text of words whose counts follow Zipf's law (RULER's alpha
  = 2: the word of rank k occurs floor(N / (zeta(2) k^2)) times in a text of nominal size N), the most
  frequent "word" being the filler `....`; asks for the three most frequent coded words (ranks 2 to 4).
  From N = 74 on those three counts are strictly apart and above every other.

Their answers are unambiguous by construction, and the tests count them again in the prompt: the
common words occur strictly more often than any other word, and the three coded words each strictly
more often than the next. Every word of a list has three syllables, so no word contains another (the
few that the budget's top-up lengthens to four are checked to contain no answer: `_lengthen`). As
RULER's, these prompts state the task before the list (`preamble`); unlike RULER's they give no worked
example, as none of our tasks does.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from typing import Callable, Iterator

from lwm_core.needle.config import MakeConfig
from lwm_core.needle.haystack import WORD_SYLLABLES, distinct_words, pseudo_word


@dataclass(frozen=True)
class WordList:
    """The context of a list task at every size, for `make` to fit to a token budget.

    `entries(size)` is the list's words in order (the same size, the same list): size 0 is the shortest
    list whose answers are unambiguous, and each step up adds about one word. `text(size, longer)` writes
    it (numbered or not) with the last `longer` of its entries that are not in `keep` (the answers and
    the filler) lengthened by a syllable: the top-up that fills the last few tokens of a budget, as the
    tail of a sentence does for a haystack. A lengthened entry is a new word that occurs once, so it
    only lowers the count of the word it was."""

    entries: Callable[[int], list[str]]
    keep: frozenset[str]
    numbered: bool

    def lengthenable(self, size: int) -> int:
        return sum(word not in self.keep for word in self.entries(size))

    def text(self, size: int, longer: int = 0) -> str:
        words = self.entries(size)
        at = len(words)
        while longer > 0 and at > 0:
            at -= 1
            if words[at] not in self.keep:
                words[at] = _lengthen(words[at], self.keep)
                longer -= 1
        if self.numbered:
            return " ".join(f"{i}. {word}" for i, word in enumerate(words, 1))
        return " ".join(words)


def _lengthen(word: str, keep: frozenset[str]) -> str:
    """`word` and a syllable more (its own first, so that lengthened words share no ending), such that no
    answer is inside it: of its three-syllable runs (at even offsets: syllables have two letters, and a
    run at an odd one starts with a vowel, as no word does) the first is `word` itself, and the last is
    checked."""
    return next(word + s for s in (word[:2], *WORD_SYLLABLES) if word[2:] + s not in keep)


class _Words:
    """The prefix of a `distinct_words` stream read so far: `take(n)` is always the same n words."""

    def __init__(self, seed: str):
        self.stream: Iterator[str] = distinct_words(random.Random(seed))
        self.words: list[str] = []

    def take(self, n: int) -> list[str]:
        while len(self.words) < n:
            self.words.append(next(self.stream))
        return self.words[:n]


@dataclass(frozen=True)
class Task:
    """needles: sentences to hide (each goes in as its own line); question: what the prompt asks;
    answers: the strings a right response contains; answer_prefix: how a base model's answer starts
    (the `base` template ends the prompt with it); ordered: the needles keep their order in the text;
    preamble: what the prompt says before the context; words: a list task's context (it has no
    needles and no haystack)."""

    needles: tuple[str, ...]
    question: str
    answers: tuple[str, ...]
    answer_prefix: str
    ordered: bool = False
    preamble: str = ""
    words: WordList | None = None


# De-duplicated (the original's list repeated cities, so two needles could share a key).
CITIES = (
    "Amsterdam", "Athens", "Auckland", "Baghdad", "Bangkok", "Barcelona", "Beijing", "Beirut", "Berlin",
    "Bogota", "Boston", "Brasilia", "Brussels", "Bucharest", "Budapest", "Buenos Aires", "Cairo", "Calgary",
    "Cape Town", "Caracas", "Casablanca", "Chicago", "Copenhagen", "Dakar", "Damascus", "Delhi", "Denver",
    "Dhaka", "Dubai", "Dublin", "Edinburgh", "Florence", "Geneva", "Hanoi", "Havana", "Helsinki",
    "Hong Kong", "Honolulu", "Istanbul", "Jakarta", "Jerusalem", "Johannesburg", "Kabul", "Karachi",
    "Kathmandu", "Kyiv", "Kyoto", "Lagos", "Lima", "Lisbon", "London", "Los Angeles", "Madrid", "Manila",
    "Marrakech", "Melbourne", "Mexico City", "Miami", "Milan", "Montreal", "Moscow", "Mumbai", "Munich",
    "Nairobi", "Naples", "New Orleans", "New York", "Oslo", "Ottawa", "Panama City", "Paris", "Perth",
    "Prague", "Quito", "Reykjavik", "Riga", "Rio de Janeiro", "Rome", "San Francisco", "Santiago",
    "Seattle", "Seoul", "Shanghai", "Singapore", "Sofia", "Stockholm", "Sydney", "Taipei", "Tallinn",
    "Tehran", "Tokyo", "Toronto", "Tunis", "Vancouver", "Venice", "Vienna", "Vilnius", "Warsaw",
    "Wellington", "Zurich",
)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _numbers(rng: random.Random, count: int) -> list[str]:
    # Distinct, so that no answer can be right for two keys.
    return [str(n) for n in rng.sample(range(1_000_000, 10_000_000), count)]


def _uuid(rng: random.Random) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _listed(items: list[str]) -> str:
    """`A`, `A and B`, `A, B, and C` (LWM's multi-needle question lists cities this way)."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def lwm_needle(city: str, number: str) -> str:
    return f"The special magic {city} number is: {number}"


def single(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    city, number = rng.choice(CITIES), _number(rng)
    return Task((lwm_needle(city, number),), f"What is the special magic {city} number?", (number,),
                f"The special magic {city} number is:")


def multi(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    cities, numbers = rng.sample(CITIES, config.needles), _numbers(rng, config.needles)
    asked = cities[: config.retrieve]
    if len(asked) == 1:
        question = f"What is the special magic {asked[0]} number?"
    else:
        question = f"What are the special magic numbers for {_listed(asked)}?"
    return Task(tuple(lwm_needle(c, n) for c, n in zip(cities, numbers)), question,
                tuple(numbers[: config.retrieve]), f"The special magic numbers for {_listed(asked)} are:")


def multikey(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    keys = [_uuid(rng) for _ in range(config.needles)]
    values = [_uuid(rng) for _ in range(config.needles)]
    if len(set(keys)) < len(keys):  # 128 random bits: never in practice, but a repeated key is a wrong row
        return multikey(rng, config, ctx)
    return Task(tuple(f"The special magic uuid for {k} is: {v}" for k, v in zip(keys, values)),
                f"What is the special magic uuid for {keys[0]}?", (values[0],),
                f"The special magic uuid for {keys[0]} is:")


def multivalue(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    city, numbers = rng.choice(CITIES), _numbers(rng, config.needles)
    return Task(tuple(lwm_needle(city, n) for n in numbers),
                f"What are all the special magic numbers for {city}?", tuple(numbers),
                f"The special magic numbers for {city} are:")


def multiquery(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    keys: list[str] = []
    while len(keys) < config.needles:  # capitalised, so never a `needles` haystack's lower-case key
        key = pseudo_word(rng).capitalize()
        if key not in keys:
            keys.append(key)
    numbers = _numbers(rng, config.needles)
    return Task(tuple(f"The special magic number for {k} is: {n}" for k, n in zip(keys, numbers)),
                f"What are the special magic numbers for {_listed(keys)}?", tuple(numbers),
                f"The special magic numbers for {_listed(keys)} are:")


def vt(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    names: list[str] = []
    while len(names) < config.needles:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, len(names))]
    return Task(tuple(chain), f"Find all variables that are assigned the value {value} in the text above.",
                tuple(names), f"The variables that are assigned the value {value} are:", ordered=True)


# RULER's cwe: 10 common words; each common and rare word's count by context (see the module).
CWE_COMMON = 10
CWE_PREAMBLE = ("Below is a numbered list of words. A few of the words occur many times, the others only a few "
                "times. Keep track of the words that occur most often.")


def cwe_counts(ctx: int) -> tuple[int, int]:
    """(times each common word occurs, times each rare word occurs) in a list for a `ctx`-token row."""
    return (30, 3) if ctx >= 4096 else (6, 1)


def cwe(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    common_times, rare_times = cwe_counts(ctx)
    vocabulary, order = _Words(f"{rng.getrandbits(64)}"), rng.getrandbits(64)
    common = vocabulary.take(CWE_COMMON)

    def entries(size: int) -> list[str]:
        # `size` rare entries: rare word i fills entries i * rare_times onwards (the last may fall short),
        # so ceil(size / rare_times) rare words.
        rare = vocabulary.take(CWE_COMMON + -(-size // rare_times))[CWE_COMMON:]
        words = common * common_times + [rare[i // rare_times] for i in range(size)]
        random.Random(f"{order}:{size}").shuffle(words)
        return words

    return Task((), f"What are the {CWE_COMMON} most common words in the list above?", tuple(common),
                f"The {CWE_COMMON} most common words in the list are:", preamble=CWE_PREAMBLE,
                words=WordList(entries, frozenset(common), numbered=True))


# RULER's fwe: Zipf's law with alpha = 2, so the count of rank k is N / (zeta(2) k^2), zeta(2) = pi^2 / 6.
_ZETA_2 = math.pi**2 / 6
# The smallest nominal size N at which ranks 2, 3, 4 and 5 have strictly decreasing counts: the gap
# between ranks 4 and 5 is N (1/16 - 1/25) / zeta(2) = 0.0137 N, at least one whole word from N = 74.
FWE_MIN_SIZE = 74
FWE_ASKED = 3
FWE_FILLER = "...."
FWE_PREAMBLE = (f"Read the coded text below and keep count of how often each coded word occurs; the dots "
                f"'{FWE_FILLER}' are filler, not a word.")


def fwe_counts(size: int) -> list[int]:
    """The count of each rank (1 first: the filler) in a coded text of nominal size `size`, ranks that
    would occur less than once left out."""
    counts, rank = [], 1
    while (count := int(size / (_ZETA_2 * rank**2))) > 0:
        counts.append(count)
        rank += 1
    return counts


def fwe(rng: random.Random, config: MakeConfig, ctx: int) -> Task:
    vocabulary, order = _Words(f"{rng.getrandbits(64)}"), rng.getrandbits(64)
    asked = vocabulary.take(FWE_ASKED)

    def entries(size: int) -> list[str]:
        counts = fwe_counts(FWE_MIN_SIZE + size)
        words = [FWE_FILLER] * counts[0]
        for word, count in zip(vocabulary.take(len(counts) - 1), counts[1:]):
            words += [word] * count
        random.Random(f"{order}:{size}").shuffle(words)
        return words

    return Task((), f"Leaving out the dots '{FWE_FILLER}', what are the {FWE_ASKED} most frequent coded words in "
                f"the text above?", tuple(asked), f"The {FWE_ASKED} most frequent coded words are:",
                preamble=FWE_PREAMBLE, words=WordList(entries, frozenset([*asked, FWE_FILLER]), numbered=False))


TASKS: dict[str, Callable[[random.Random, MakeConfig, int], Task]] = {
    "single": single, "multi": multi, "multikey": multikey, "multivalue": multivalue,
    "multiquery": multiquery, "vt": vt, "cwe": cwe, "fwe": fwe,
}
