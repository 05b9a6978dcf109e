"""The data pipeline of `lwm train`: LWM's JSONL formats in, packed rows with segment ids out.

    config = DataConfig(path="data.jsonl", fields="[question],answer")
    stream = DataStream(config, tokenizer, rows=8, seq_len=4096)
    batch = stream.next_batch()  # Batch of (8, 4096) numpy arrays

`fields` parses LWM's fields syntax, `process` turns one JSON line into tokens and masks, `jsonl`
gives random access to lines, `packing` builds rows, `stream` orders, splits and resumes.
"""

from lwm_core.data.config import DataConfig
from lwm_core.data.fields import parse_fields
from lwm_core.data.jsonl import JsonlIndex
from lwm_core.data.packing import Batch, pack_rows
from lwm_core.data.process import Example, process_example
from lwm_core.data.stream import DataStream

__all__ = ["DataConfig", "Example", "Batch", "parse_fields", "process_example", "JsonlIndex", "pack_rows",
           "DataStream"]
