"""A synthetic video world, procedural and seeded: captions of a small grammar ("a red circle moving left",
"green fireworks", "fireworks over a blue square"), the clips they describe, and directories of captioned
H.264 clips for the demo models to train on offline. numpy only: no jax, no network."""

from lwm_core.world.dataset import KINDS, all_scenes, sample_specs, write_world
from lwm_core.world.grammar import (
    COLOURS,
    MOTIONS,
    SHAPES,
    Fireworks,
    Scene,
    Thing,
    grammar_words,
    parse_caption,
)
from lwm_core.world.render import DEFAULT_FRAMES, DEFAULT_SIZE, LAYOUTS, render

__all__ = ["COLOURS", "DEFAULT_FRAMES", "DEFAULT_SIZE", "KINDS", "LAYOUTS", "MOTIONS", "SHAPES", "Fireworks", "Scene",
           "Thing", "all_scenes", "grammar_words", "parse_caption", "render", "sample_specs", "write_world"]
