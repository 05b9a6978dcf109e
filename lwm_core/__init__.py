"""lwm_core: the Large World Model in JAX. The stable public API is re-exported here."""

from lwm_core.api import LWM, load_model, resolve_dtype
from lwm_core.config import CARDS, PRESETS, ModelConfig, get_config
from lwm_core.errors import LWMError
from lwm_core.parallel.mesh import make_mesh, parse_mesh
from lwm_core.prompts import chat_prompt

__all__ = ["LWM", "CARDS", "PRESETS", "LWMError", "ModelConfig", "chat_prompt", "get_config", "load_model",
           "make_mesh", "parse_mesh", "resolve_dtype"]
__version__ = "0.1.0"
