"""A stand-in for vLLM 0.11.0's Python API where vLLM cannot be installed: the names ragline's engine uses.

Put on PYTHONPATH by tests/images only, to start the generator's real entrypoint in the GPU image's dependency
set. Argument names are vLLM 0.11.0's own (EngineArgs and SamplingParams fields): an unknown one is a TypeError,
as it is there. Generation echoes a fixed reply, one word per step, with vLLM's cumulative outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

__version__ = "0.11.0+standin"


@dataclass
class AsyncEngineArgs:
    model: str = "facebook/opt-125m"
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    revision: str | None = None
    max_model_len: int | None = None
    served_model_name: str | list[str] | None = None
    seed: int | None = 0
    enforce_eager: bool = False
    disable_log_stats: bool = False


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
