"""Build the small sentencepiece tokenizer shipped in `lwm_core/assets/tokenizer.model`.

`random:<preset>` models (smoke tests, benchmarks, the README quick-start) need a real tokenizer
without a download. We cannot ship LLaMA-2's `tokenizer.model` (its licence is not ours to
redistribute) or train on text we do not own, so the training text is the one corpus every Python
install carries: the docstrings of the standard library.

The model follows LLaMA-2's conventions so that code exercised with it behaves as with the real one:
BPE, `<unk>` 0, `<s>` 1, `</s>` 2, no pad piece, byte fallback (so any text round-trips), digits
split one by one, identity normalisation, a dummy-prefix space, whitespace kept as is.

Training is deterministic: the text is collected in sorted module and attribute order, deduplicated,
fed to the trainer in that order without sampling or shuffling, on one thread. The docstrings, and so
the model, depend on the Python version (the shipped asset names its version in assets/README.md).

Usage:  python scripts/build_tokenizer.py [--vocab-size 4096] [--out lwm_core/assets/tokenizer.model]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "lwm_core" / "assets" / "tokenizer.model"

# Modules that are not private or tests but must not be imported: they open windows or browsers,
# print on import, install or create things from a `__main__`, or need a display.
_SKIP_PARTS = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "ensurepip",
        "venv",
        "lib2to3",
        "pydoc_data",
        "test",
        "tests",
        "__main__",
        "msilib",
        "winreg",
        "winsound",
        "msvcrt",
        "_winapi",
    }
)

# sentencepiece splits training text into "sentences" at newlines and ignores those longer than
# max_sentence_length bytes; docstring lines are far shorter.
_MAX_SENTENCE_BYTES = 4192


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return any(p.startswith(("_", "test_")) or p in _SKIP_PARTS for p in parts)


def _stdlib_module_names() -> list[str]:
    """Importable public stdlib modules and their submodules, sorted. Imports each one."""
    found: set[str] = set()
    pending = sorted(n for n in sys.stdlib_module_names if not _skipped(n))
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        module = _import_quietly(name)
        if module is None:
            continue
        found.add(name)
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        children = sorted(f"{name}.{info.name}" for info in pkgutil.iter_modules(path))
        pending.extend(c for c in children if not _skipped(c))
    return sorted(found)


def _import_quietly(name: str):
    """Import a module, or return None if it fails; its warnings and output are discarded."""
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - SystemExit, missing C extensions, platform-only modules
        return None


def _docstrings(module) -> Iterator[str]:
    """The docstrings of a module, its public classes and functions, and the classes' methods."""
    yield getattr(module, "__doc__", None) or ""
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield getattr(obj, "__doc__", None) or ""
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if attr.startswith("_"):
                    continue
                member = vars(obj)[attr]
                if inspect.isroutine(member) or isinstance(member, (property, classmethod, staticmethod)):
                    yield getattr(member, "__doc__", None) or ""


def collect_stdlib_text() -> list[str]:
    """Training lines: every distinct stdlib docstring, dedented, one line per sentence, in order."""
    seen: set[str] = set()
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading typing.io.__doc__ & co. warns
        docs = [doc for name in _stdlib_module_names() for doc in _docstrings(sys.modules[name])]
    for doc in docs:
        if not isinstance(doc, str):
            continue
        doc = inspect.cleandoc(doc)
        # Inherited and re-exported objects repeat docstrings (os.path and posixpath, ...).
        if not doc or doc in seen:
            continue
        seen.add(doc)
        lines.extend(
            line for line in doc.splitlines() if line.strip() and len(line.encode("utf-8")) <= _MAX_SENTENCE_BYTES
        )
    return lines


def train_tokenizer(lines: Iterable[str], vocab_size: int = 4096) -> bytes:
    """Train a LLaMA-2-style sentencepiece BPE model on `lines`; returns the serialized model."""
    import sentencepiece as spm

    model = io.BytesIO()
    # logstream: the trainer logs every step to stderr otherwise.
    with open(os.devnull, "w") as log:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(list(lines)),
            model_writer=model,
            logstream=log,
            model_type="bpe",
            vocab_size=vocab_size,
            # LLaMA-2's special ids: no pad piece (pad 0 by convention, handled by lwm_core.tokenizer).
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            byte_fallback=True,
            split_digits=True,
            split_by_unicode_script=True,
            split_by_whitespace=True,
            split_by_number=True,
            allow_whitespace_only_pieces=True,
            max_sentencepiece_length=16,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            character_coverage=0.99995,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            unk_surface=" \u2047 ",
            # Determinism: every sentence, in the given order, on one thread.
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    return model.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096, help="number of pieces (default 4096)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write tokenizer.model")
    args = parser.parse_args(argv)

    lines = collect_stdlib_text()
    n_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    print(f"training on {len(lines)} lines ({n_bytes / 1e6:.1f} MB) of Python {sys.version.split()[0]} "
          f"stdlib docstrings", file=sys.stderr)
    data = train_tokenizer(lines, vocab_size=args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
