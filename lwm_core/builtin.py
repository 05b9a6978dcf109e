"""The built-in demo models: small LWM models that lwm trains itself on its own synthetic worlds and ships
inside the package, so that every command does something real on a fresh install, offline.

- `lwm-demo-vision`: LWM-Chat in miniature over the video world of `lwm world make` (coloured shapes that
  move, bounce, grow or turn; fireworks): caption -> image or video (`lwm gen`), image or video +
  question -> caption (`lwm chat --video`). Its VQGAN (10 x 10 codes per 40 x 40 frame, in LWM's layout) is
  `vqgan/` beside it.
- `lwm-demo-text`: LWM-Text-Chat in miniature: long synthetic documents with needles (`lwm needle make`'s
  tasks), trained with progressive context extension; the default of `lwm needle eval` and `lwm chat`.

A model here is an lwm native directory (config.json, model.safetensors in bfloat16, tokenizer.model)
plus CARD.md (its recipe, seeds, final losses and measured quality) under `lwm_core/assets/models/NAME`.
Names are accepted wherever a model spec is (`-m lwm-demo-vision`); `lwm models` lists them and says
which are in this install (a model is listed before its weights ship: docs/demo.md has where each stands).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lwm_core.errors import LWMError

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "models")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    summary: str  # one line for `lwm models`
    recipe: str  # where its recipe is described (docs/demo.md)
    defaults: tuple[str, ...]  # the commands that use it when no -m is given

    @property
    def path(self) -> str:
        return os.path.join(MODELS_DIR, self.name)

    @property
    def installed(self) -> bool:
        return os.path.isfile(os.path.join(self.path, "model.safetensors"))

    def card(self) -> str:
        """CARD.md's text ('' when the model has none)."""
        try:
            with open(os.path.join(self.path, "CARD.md"), encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""


VISION = "lwm-demo-vision"
TEXT = "lwm-demo-text"
MODELS: dict[str, BuiltinModel] = {m.name: m for m in [
    BuiltinModel(VISION, "LWM-Chat in miniature: captions <-> 8-frame 40x40 videos of the lwm world (shapes, "
                         "motions, fireworks)", "docs/demo.md#lwm-demo-vision",
                 ("gen image", "gen video", "chat --image/--video")),
    BuiltinModel(TEXT, "LWM-Text-Chat in miniature: needle retrieval in synthetic documents up to 8K tokens, "
                       "trained 256 -> 2K -> 8K", "docs/demo.md#lwm-demo-text",
                 ("chat", "needle eval")),
]}


def is_builtin_name(spec: str) -> bool:
    """A spec that names a built-in model rather than a path: `lwm-demo-...` with no such file or folder."""
    return spec in MODELS and not os.path.exists(spec)


def looks_like_name(spec: str) -> bool:
    """A bare word (no path separator, no `:`, no extension) that is no file or folder: meant as a name."""
    return (bool(spec) and "/" not in spec and os.sep not in spec and ":" not in spec and "." not in spec
            and not os.path.exists(spec))


def resolve(name: str) -> str:
    """A built-in model's directory; a name that is none of them, or one whose weights this install lacks,
    is one clear error."""
    from lwm_core.config import did_you_mean

    model = MODELS.get(name)
    if model is None:
        raise LWMError(f"unknown model {name!r}{did_you_mean(name, MODELS)} (built-in models: {', '.join(MODELS)}; "
                       f"any other model is a path, a hub id owner/name or random:<preset>)")
    if not model.installed:
        raise LWMError(f"built-in model {name} has no weights in this install ({model.path}); its recipe "
                       f"({model.recipe}) trains it, or pass another model with -m")
    return model.path


def default(command: str) -> str:
    """The built-in model a command uses when no -m is given (`lwm models` says which)."""
    for model in MODELS.values():
        if command in model.defaults:
            return model.name
    raise LWMError(f"no built-in model serves {command!r}")
