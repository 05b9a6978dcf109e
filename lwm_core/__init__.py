"""lwm_core: the Large World Model in JAX. The stable public API is re-exported here.

Attributes are imported on first use, so `import lwm_core.config` (or the CLI's `--help`) does not pay
for importing jax.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LWM": "lwm_core.api",
    "load_model": "lwm_core.api",
    "resolve_dtype": "lwm_core.loading",
    "CARDS": "lwm_core.config",
    "PRESETS": "lwm_core.config",
    "ModelConfig": "lwm_core.config",
    "get_config": "lwm_core.config",
    "LWMError": "lwm_core.errors",
    "make_mesh": "lwm_core.parallel.mesh",
    "parse_mesh": "lwm_core.parallel.mesh",
    "chat_prompt": "lwm_core.prompts",
    "load_tokenizer": "lwm_core.tokenizer",
    "load_vqgan": "lwm_core.vision.loading",
    "GenerationStats": "lwm_core.generate.decode",
    "vision_chat_prompt": "lwm_core.prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lwm_core' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
