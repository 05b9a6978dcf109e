"""The tasks: what each row hides, what it asks, and the answers it accepts.

One small function per task takes the row's own `random.Random` and the config and returns a `Task`.
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
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

from lwm_core.needle.config import MakeConfig
from lwm_core.needle.haystack import pseudo_word


@dataclass(frozen=True)
class Task:
    """needles: sentences to hide (each goes in as its own line); question: what the prompt asks;
    answers: the strings a right response contains; answer_prefix: how a base model's answer starts
    (the `base` template ends the prompt with it); ordered: the needles keep their order in the text."""

    needles: tuple[str, ...]
    question: str
    answers: tuple[str, ...]
    answer_prefix: str
    ordered: bool = False


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


def single(rng: random.Random, config: MakeConfig) -> Task:
    city, number = rng.choice(CITIES), _number(rng)
    return Task((lwm_needle(city, number),), f"What is the special magic {city} number?", (number,),
                f"The special magic {city} number is:")


def multi(rng: random.Random, config: MakeConfig) -> Task:
    cities, numbers = rng.sample(CITIES, config.needles), _numbers(rng, config.needles)
    asked = cities[: config.retrieve]
    if len(asked) == 1:
        question = f"What is the special magic {asked[0]} number?"
    else:
        question = f"What are the special magic numbers for {_listed(asked)}?"
    return Task(tuple(lwm_needle(c, n) for c, n in zip(cities, numbers)), question,
                tuple(numbers[: config.retrieve]), f"The special magic numbers for {_listed(asked)} are:")


def multikey(rng: random.Random, config: MakeConfig) -> Task:
    keys = [_uuid(rng) for _ in range(config.needles)]
    values = [_uuid(rng) for _ in range(config.needles)]
    if len(set(keys)) < len(keys):  # 128 random bits: never in practice, but a repeated key is a wrong row
        return multikey(rng, config)
    return Task(tuple(f"The special magic uuid for {k} is: {v}" for k, v in zip(keys, values)),
                f"What is the special magic uuid for {keys[0]}?", (values[0],),
                f"The special magic uuid for {keys[0]} is:")


def multivalue(rng: random.Random, config: MakeConfig) -> Task:
    city, numbers = rng.choice(CITIES), _numbers(rng, config.needles)
    return Task(tuple(lwm_needle(city, n) for n in numbers),
                f"What are all the special magic numbers for {city}?", tuple(numbers),
                f"The special magic numbers for {city} are:")


def multiquery(rng: random.Random, config: MakeConfig) -> Task:
    keys: list[str] = []
    while len(keys) < config.needles:  # capitalised, so never a `needles` haystack's lower-case key
        key = pseudo_word(rng).capitalize()
        if key not in keys:
            keys.append(key)
    numbers = _numbers(rng, config.needles)
    return Task(tuple(f"The special magic number for {k} is: {n}" for k, n in zip(keys, numbers)),
                f"What are the special magic numbers for {_listed(keys)}?", tuple(numbers),
                f"The special magic numbers for {_listed(keys)} are:")


def vt(rng: random.Random, config: MakeConfig) -> Task:
    names: list[str] = []
    while len(names) < config.needles:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, len(names))]
    return Task(tuple(chain), f"Find all variables that are assigned the value {value} in the text above.",
                tuple(names), f"The variables that are assigned the value {value} are:", ordered=True)


TASKS: dict[str, Callable[[random.Random, MakeConfig], Task]] = {
    "single": single, "multi": multi, "multikey": multikey, "multivalue": multivalue,
    "multiquery": multiquery, "vt": vt,
}
