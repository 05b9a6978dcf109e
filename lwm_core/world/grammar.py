"""The synthetic world's caption grammar: scene specs (frozen dataclasses) and captions, one for one.

    scene     := thing | fireworks | fireworks " over " thing_still
    thing     := "a " COLOUR " " SHAPE [" " MOTION]          (no motion: the thing stands still)
    fireworks := [COLOUR " "] "fireworks"                    (no colour: particles of many colours)

"a red circle moving left", "green fireworks", "fireworks over a blue square". Every caption of the
grammar parses to one `Scene` and every `Scene` writes one caption, so `parse_caption(s.caption) == s`
and `parse_caption(c).caption == c`. Words are lower case, separated by single spaces, "an" before a
vowel ("an orange square"); `parse_caption` forgives case, extra spaces, a final full stop and "a" for
"an" (and back), and refuses anything else with one line that lists the grammar's words.

The colours are chosen to be told apart by hue on the dark background (and white by its missing hue),
so that a colour mask finds them again after H.264's yuv420p halves the colour resolution; the shapes by
their outline's symmetry (3, 4, 5-fold, or none); rotating is refused for a circle, whose rotation
cannot be seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from lwm_core.errors import LWMError

# name -> RGB. Hues 0, 31, 57, 128, 187, 224, 276 degrees (>= 26 apart), all bright; white has no hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 45),
    "orange": (245, 140, 25),
    "yellow": (240, 225, 40),
    "green": (45, 205, 70),
    "cyan": (40, 210, 230),
    "blue": (55, 95, 250),
    "purple": (175, 65, 235),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "star")
# motion id -> its words in a caption ("still" has none: "a red circle").
MOTIONS: dict[str, str] = {
    "still": "",
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "bouncing": "bouncing",
    "growing": "growing",
    "shrinking": "shrinking",
    "rotating": "rotating",
}
ROTATION_FREE = ("circle",)  # shapes that look the same at every angle: "rotating" is refused for them


@dataclass(frozen=True)
class Thing:
    """One solid shape of one colour, moving (or not) as `motion` says."""

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    motion: str = "still"  # one of MOTIONS

    def __post_init__(self):
        _check("shape", self.shape, SHAPES)
        _check("colour", self.colour, COLOURS)
        _check("motion", self.motion, MOTIONS)
        if self.motion == "rotating" and self.shape in ROTATION_FREE:
            raise LWMError(f"a {self.shape} looks the same at every angle, so 'rotating' cannot be seen; "
                           f"rotate one of {', '.join(s for s in SHAPES if s not in ROTATION_FREE)}")

    @property
    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"  # "an orange square"
        return " ".join(filter(None, [article, self.colour, self.shape, MOTIONS[self.motion]]))


@dataclass(frozen=True)
class Fireworks:
    """Bursts of particles that rise, spread out and fade; `colour` None: each particle its own colour."""

    colour: Optional[str] = None

    def __post_init__(self):
        if self.colour is not None:
            _check("colour", self.colour, COLOURS)

    @property
    def caption(self) -> str:
        return "fireworks" if self.colour is None else f"{self.colour} fireworks"


@dataclass(frozen=True)
class Scene:
    """What one clip shows: a thing, fireworks, or fireworks over a thing that stands still."""

    thing: Optional[Thing] = None
    fireworks: Optional[Fireworks] = None

    def __post_init__(self):
        if self.thing is None and self.fireworks is None:
            raise LWMError("a scene needs a thing, fireworks or both")
        if self.thing is not None and self.fireworks is not None:
            if self.thing.motion != "still":
                raise LWMError(f"fireworks go over a thing that stands still, not one {MOTIONS[self.thing.motion]}")
            if self.fireworks.colour == self.thing.colour:
                raise LWMError(f"{self.fireworks.colour} fireworks over a {self.thing.colour} thing cannot be told "
                               f"apart; give them different colours")

    @property
    def caption(self) -> str:
        if self.fireworks is None:
            return self.thing.caption
        if self.thing is None:
            return self.fireworks.caption
        return f"{self.fireworks.caption} over {self.thing.caption}"

    def to_dict(self) -> dict[str, Any]:
        """The flat fields of captions.jsonl: shape, colour, motion (null without a thing), fireworks
        (bool) and fireworks_colour (null: many colours, or no fireworks)."""
        thing = dataclasses.asdict(self.thing) if self.thing else {"shape": None, "colour": None, "motion": None}
        return {**thing, "fireworks": self.fireworks is not None,
                "fireworks_colour": self.fireworks.colour if self.fireworks else None}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "Scene":
        thing = None if fields.get("shape") is None else \
            Thing(fields["shape"], fields["colour"], fields.get("motion") or "still")
        fireworks = Fireworks(fields.get("fireworks_colour")) if fields.get("fireworks") else None
        return cls(thing, fireworks)


def _check(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise LWMError(f"unknown {what} {value!r}; one of {', '.join(allowed)}")


def grammar_words() -> str:
    """The grammar in one line, for error messages and help."""
    motions = ", ".join(words for words in MOTIONS.values() if words)
    return (f"captions are 'a COLOUR SHAPE [MOTION]', '[COLOUR] fireworks' or '[COLOUR] fireworks over a COLOUR "
            f"SHAPE'; colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; motions: {motions} "
            f"(none: still), e.g. 'a red circle moving left'")


_MOTION_WORDS = {words: motion for motion, words in MOTIONS.items() if words}


def parse_caption(caption: str) -> Scene:
    """A caption of the grammar -> its `Scene`; anything else raises an LWMError naming the grammar."""
    words = caption.strip().rstrip(".").lower().split()
    try:
        if "over" in words:
            at = words.index("over")
            fireworks, thing = _fireworks(words[:at]), _thing(words[at + 1:])
            if thing.motion != "still":
                raise LWMError(f"fireworks go over a thing that stands still, not one {MOTIONS[thing.motion]}")
            return Scene(thing, fireworks)
        if words and words[-1] == "fireworks":
            return Scene(fireworks=_fireworks(words))
        return Scene(thing=_thing(words))
    except _NotGrammar as e:
        raise LWMError(f"cannot read the caption {caption!r}: {e}; {grammar_words()}") from None
    except LWMError as e:
        raise LWMError(f"cannot render the caption {caption!r}: {e}") from None


class _NotGrammar(Exception):
    pass


def _fireworks(words: list[str]) -> Fireworks:
    if words == ["fireworks"]:
        return Fireworks()
    if len(words) == 2 and words[1] == "fireworks":
        _word("colour", words[0], COLOURS)
        return Fireworks(words[0])
    raise _NotGrammar(f"{' '.join(words) or 'nothing'!r} is not '[COLOUR] fireworks'")


def _thing(words: list[str]) -> Thing:
    if len(words) < 3 or words[0] not in ("a", "an"):
        raise _NotGrammar(f"{' '.join(words) or 'nothing'!r} is not 'a COLOUR SHAPE [MOTION]'")
    _word("colour", words[1], COLOURS)
    _word("shape", words[2], SHAPES)
    rest = " ".join(words[3:])
    if rest and rest not in _MOTION_WORDS:
        raise _NotGrammar(f"unknown motion {rest!r}")
    return Thing(words[2], words[1], _MOTION_WORDS.get(rest, "still"))


def _word(what: str, word: str, allowed) -> None:
    if word not in allowed:
        raise _NotGrammar(f"unknown {what} {word!r}")
