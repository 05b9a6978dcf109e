"""Reading the released VQGAN pickle without running its code.

LWM ships its VQGAN weights (`vqgan` in the LWM-Chat-*-Jax repos) as a Python pickle, which the original
opened with `pickle.load`: a pickle names callables that the loader calls, so a tampered file runs
whatever it likes. Here a restricted unpickler resolves only the globals that rebuilding a tree of dicts
and numpy arrays needs, and refuses every other name before anything is called.

What the released file needs: the original passes the unpickled object straight to
`model.apply({'params': params})`, so it is the bare params tree (top keys encoder, decoder, quantize,
quant_conv, post_quant_conv) of float32 arrays. Which containers and array types the authors' pickle
used depends on their session, so the variants such a session produces are all read, each rebuilt by
our own code or numpy's array constructors:

- numpy arrays, pickled by numpy 1.x (`numpy.core.multiarray._reconstruct`) or 2.x (`numpy._core`), by
  protocol 5 (`numpy._core.numeric._frombuffer`), or by protocol 2 (bytes as `_codecs.encode(str,
  'latin1')`, latin1 only);
- jax arrays (`jax._src.array._reconstruct_array`, whose arguments are the numpy pickle of the value):
  rebuilt as numpy arrays, without importing jax's function;
- Flax `FrozenDict`s and `collections.OrderedDict`s: rebuilt as plain dicts.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, Callable

import numpy as np

from lwm_core.errors import LWMError


def _numpy_reconstruct():
    from numpy._core import multiarray

    return multiarray._reconstruct


def _numpy_frombuffer():
    from numpy._core import numeric

    return numeric._frombuffer


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode`, as protocol-2 pickles use it to carry bytes: latin1 only, on a str only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not how a pickle "
                                     f"carries bytes")
    return text.encode("latin1")


def _jax_array(fun: Callable, args: tuple, state: Any, aval_state: Any = None) -> np.ndarray:
    """jax's `_reconstruct_array(fun, args, arr_state, aval_state)`: `fun(*args)` with `state` set is the
    numpy value (fun is itself one of the allowed globals); the device placement is left to the loader."""
    value = fun(*args)
    if not isinstance(value, np.ndarray):
        raise pickle.UnpicklingError("a pickled jax array that is not a numpy array inside")
    value.__setstate__(state)
    return value


def _plain_dict(*args, **kwargs) -> dict:
    return dict(*args, **kwargs)


# (module, name) -> a function that returns the object to use. Both numpy spellings map to numpy 2's
# functions (importing numpy.core would warn); nothing else is ever imported.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("jax._src.array", "_reconstruct_array"): lambda: _jax_array,
    ("flax.core.frozen_dict", "FrozenDict"): lambda: _plain_dict,
    ("collections", "OrderedDict"): lambda: _plain_dict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, origin: str):
        super().__init__(file)
        self.origin = origin

    def find_class(self, module: str, name: str) -> Any:
        # Called for every global the pickle names, before it is used: the one gate.
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise LWMError(f"{self.origin} is not a plain params pickle: it calls {module}.{name}, which "
                           f"rebuilding dicts and numpy arrays never needs; refusing to load it (nothing was "
                           f"run; get the file from its original source)")
        return allowed()

    def persistent_load(self, pid: Any) -> Any:
        raise LWMError(f"{self.origin} is not a plain params pickle: it refers to outside objects "
                       f"(persistent id {str(pid)[:40]!r}); refusing to load it")


def load_pickle(path: str) -> Any:
    """The object pickled in the file `path`, rebuilt from dicts, lists, tuples, strings, numbers and numpy
    arrays only. Anything else in the file is refused with an `LWMError` before it could run."""
    origin = f"VQGAN file {path}"
    try:
        with open(path, "rb") as f:
            return _Unpickler(io.BufferedReader(f, buffer_size=1 << 20), origin).load()
    except LWMError:
        raise
    except FileNotFoundError:
        raise LWMError(f"{origin} does not exist; check the path") from None
    except IsADirectoryError:
        raise LWMError(f"{origin} is a directory, not a file") from None
    except OSError as e:
        raise LWMError(f"cannot read {origin}: {e.strerror or e}; check the path and its permissions") from None
    except (pickle.UnpicklingError, EOFError, MemoryError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as e:
        if not _looks_like_pickle(path):
            raise LWMError(f"{origin} is not a pickle (it does not start like one); pass the released `vqgan` "
                           f"file or a directory written by `lwm convert vqgan`") from None
        # A truncated download, or a pickle that the allowed constructors cannot rebuild.
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise LWMError(f"{origin} is damaged or not a params pickle ({_first_line(detail)}); download it "
                       f"again (the released one has about 585 MB)") from None


def _looks_like_pickle(path: str) -> bool:
    """Protocol 2 and later start with PROTO (0x80, version); 0 and 1 with an opcode, often '(' or '}'."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and ((head[0] == 0x80 and 2 <= head[1] <= 5) or head[:1] in b"(}]cK")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else text
