"""A needle dataset run by transformers on a Hugging Face `LlamaForCausalLM` directory: the cross-check
backend of `lwm needle eval` (torch and transformers, the optional `lwm[torch]` extra).

The same rows give the same result rows as `eval.generate_batch` on the JAX model, so that a directory
that `lwm convert jax2hf` wrote scores like the model it came from, and a disagreement points at one of
the two implementations rather than at the dataset. `resolve_hf` reads what rows are checked against
(config and tokenizer: no torch, no weights), `load_hf` the model, as `resolve_spec` and `load_model` for
the JAX backend. What is shared with it, and why:

- The token ids. Prompts are encoded by lwm's own tokenizer (`lwm_core.tokenizer`), loaded from the
  directory's `tokenizer.model` (which jax2hf copies byte for byte) or from `tokenizer=`, never by
  transformers' tokenizer: the dataset's lengths and `tokenizer` digest were counted with lwm's, and
  a fast HF tokenizer need not give the same ids. `check_rows` refuses rows of another tokenizer.
- Greedy decoding, stopped at EOS or max_new_tokens, the reply cut at EOS/pad and scored by
  `eval.result_row`. The directory's generation_config.json is replaced by a bare one (bos, eos, pad):
  a cross-check must not pick up a checkpoint's sampling settings or repetition penalty.
- Left padding with an attention mask: transformers then derives each row's positions from the mask
  (cumsum - 1), so a row's first real token is at position 0, as in `LWM.generate`.

`prefill_tokens_per_s` is the batch's prompt tokens (unpadded) over the seconds until the first new
tokens reach the host (the prefill of the padded batch and one argmax: the copy to the host waits for
the device), as the JAX backend measures it; `seconds` is the batch's whole `generate`, prefill and
decode together. torch compiles nothing, so its first batch does not read slower.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.needle import eval as needle_eval


class HFBackend:
    """A transformers Llama model and lwm's tokenizer, ready to run needle batches (see `load_hf`).

    Attributes:
        directory: the Hugging Face directory the model was loaded from (the name errors use).
        config: its config.json as an lwm `ModelConfig` (vocab, context, bos/eos/pad ids).
        tokenizer: lwm's tokenizer that encodes the prompts; `tokenizer_id` its digest (as rows record it).
        model: the `LlamaForCausalLM`, in eval mode on `device`, computing in `dtype` (torch objects).
    """

    def __init__(self, directory: str, config: ModelConfig, tokenizer, model, *, device, dtype):
        from lwm_core.needle.make import tokenizer_digest

        self.directory, self.config, self.tokenizer, self.model = directory, config, tokenizer, model
        self.device, self.dtype = device, dtype
        self.tokenizer_id = tokenizer_digest(tokenizer)

    def __repr__(self) -> str:
        return f"HFBackend({self.directory!r}, dtype={self.dtype}, device={self.device})"

    @property
    def max_context(self) -> int:
        """config.json's max_position_embeddings: the longest prompt + reply a row may need."""
        return self.config.max_sequence_length

    def check_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """`check_hf_rows` against this model."""
        check_hf_rows(rows, self.directory, (self.config, self.tokenizer))

    def generate_batch(self, batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Greedy replies to a batch's prompts (one max_new_tokens) -> their result rows, as
        `eval.generate_batch` gives them for the JAX model."""
        import torch

        n = batch[0]["max_new_tokens"]
        if any(row["max_new_tokens"] != n for row in batch):  # a caller's bug: eval.batches cuts by it
            raise ValueError(f"a batch has one max_new_tokens; row {batch[0]['id']} has {n}, others differ")
        cfg = self.config
        prompts = [self.tokenizer.encode(row["prompt"]) for row in batch]
        T = max(len(p) for p in prompts)
        # (B, T), left-padded: every prompt ends at the last column, where generation continues.
        ids = torch.full((len(prompts), T), cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p):] = 1
        first = _FirstTokens()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=n, do_sample=False, streamer=first)
        seconds = time.perf_counter() - start
        new = out[:, T:].cpu().tolist()  # (B, <= n): rows that stopped early are padded after their EOS
        prefill = first.at - start if first.at is not None else seconds
        speed = sum(len(p) for p in prompts) / prefill if prefill > 0 else None
        text = needle_eval.reply_text  # the JAX backend's cut at EOS/pad, shared
        return [needle_eval.result_row(row, text(self.tokenizer, tokens, cfg.eos_token_id, cfg.pad_token_id, n),
                                       seconds=seconds, prefill_tokens_per_s=speed)
                for row, tokens in zip(batch, new)]


class _FirstTokens:
    """A transformers streamer (`put`, `end`) that only notes when the first new tokens reach the host:
    `generate` hands a streamer the prompt, then each step's tokens, copied to the host (so the device
    has finished the prefill)."""

    def __init__(self):
        self.puts, self.at = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:  # the first put is the prompt
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def resolve_hf(directory: str | os.PathLike[str], *, tokenizer: str | os.PathLike[str] | None = None
               ) -> tuple[ModelConfig, Any]:
    """(config, lwm tokenizer) of a Hugging Face directory, without torch or the weights: what the rows
    are checked against before the model loads (`load_hf` takes it back as `resolved=`).

    Args:
        directory: the Hugging Face model directory.
        tokenizer: lwm tokenizer to encode prompts with (a tokenizer.model, or a directory holding one);
            None: the directory's tokenizer.model.
    """
    from lwm_core.checkpoint.hf import read_hf_dir
    from lwm_core.tokenizer import load_tokenizer

    directory = os.fspath(directory)
    # config.json is a Llama's and the weights are there (safetensors: only their headers are read).
    config, _ = read_hf_dir(directory)
    if tokenizer is None:
        tokenizer = os.path.join(directory, "tokenizer.model")
        if not os.path.isfile(tokenizer):
            raise LWMError(f"{directory} has no tokenizer.model; pass the sentencepiece tokenizer.model the "
                           f"dataset was made with (--tokenizer PATH)")
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size > config.vocab_size:
        raise LWMError(f"tokenizer {tok.path} has {tok.vocab_size} ids but {directory} a vocabulary of "
                       f"{config.vocab_size}; pass the tokenizer of this model")
    return config, tok


def check_hf_rows(rows: Sequence[dict[str, Any]], directory: str, resolved: tuple[ModelConfig, Any]) -> None:
    """Refuse, before any work (and before the weights: `resolved` is what `resolve_hf` returned), rows
    counted with another tokenizer or longer than the directory's context."""
    from lwm_core.needle.make import tokenizer_digest

    config, tokenizer = resolved
    tokenizer_id = tokenizer_digest(tokenizer)
    for row in rows:  # eval.check_rows's own advice (-m) does not apply to a directory
        if row["tokenizer"] != tokenizer_id:
            raise LWMError(f"row {row['id']} was counted with tokenizer {row['tokenizer']}, but {tokenizer.path} "
                           f"is {tokenizer_id}; pass the tokenizer the dataset was made with, or make it with "
                           f"--tokenizer {tokenizer.path}")
    needle_eval.check_rows(rows, max_context=config.max_sequence_length, tokenizer_id=tokenizer_id,
                           model=os.fspath(directory))


def load_hf(directory: str | os.PathLike[str], *, tokenizer: str | os.PathLike[str] | None = None,
            dtype: str | None = None, device: str | None = None,
            resolved: tuple[ModelConfig, Any] | None = None) -> HFBackend:
    """Load a Hugging Face `LlamaForCausalLM` directory (config.json + safetensors, as `lwm convert jax2hf`
    writes it) with transformers, for `HFBackend.generate_batch`.

    Args:
        directory, tokenizer: as `resolve_hf`; `resolved`: what it returned for them (not read again).
        dtype: compute and weight dtype (any spelling of lwm_core.dtypes); None: float32 on CPU, bfloat16
            on a GPU (as the JAX backend's default).
        device: a torch device; None: the first CUDA device if torch sees one, else the CPU.
    """
    from lwm_core import dtypes

    torch, transformers = require_torch()
    name = dtypes.parse_dtype(dtype) if dtype is not None else None
    directory = os.fspath(directory)
    config, tok = resolved or resolve_hf(directory, tokenizer=tokenizer)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = getattr(torch, name or ("float32" if device.type == "cpu" else "bfloat16"))
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype,
                                                                  local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        raise LWMError(f"transformers cannot load {directory} ({reason}); is it a LlamaForCausalLM directory?") \
            from None
    model.to(device).eval()
    # Plain greedy, whatever the directory's generation_config.json says (see the module docstring).
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return HFBackend(directory, config, tok, model, device=device, dtype=torch_dtype)


def require_torch():
    """(torch, transformers), or the one-line LWMError that says how to install them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise LWMError("running a Hugging Face directory needs torch and transformers: "
                       "pip install 'lwm[torch]'") from None
    return torch, transformers
