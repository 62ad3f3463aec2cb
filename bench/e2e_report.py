"""The e2e benchmark's verdicts, Markdown table and latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = {"single_process": "one process", "services": "four services"}
HOPS = [
    ("api_http", "api (HTTP, whole request)"),
    ("api_own", "  api's own work"),
    ("hop_api_to_retriever", "  hop api → retriever"),
    ("retriever_grpc", "retriever (gRPC Search)"),
    ("retriever_own", "  retriever's own work"),
    ("retriever_embed_call", "  embed call (as the retriever sees it)"),
    ("hop_retriever_to_embedder", "  hop retriever → embedder, with the wait for a shared RPC"),
    ("queries_per_embed_rpc", "  queries per Embed RPC"),
    ("embedder_grpc", "embedder (gRPC Embed)"),
    ("embedder_queue", "  batch wait"),
    ("embedder_inference_per_batch", "  model, per batch"),
    ("embedder_batch_size", "  texts per batch"),
    ("qdrant_search", "Qdrant search (embedded edge shard)"),
    ("hop_api_to_generator", "hop api → generator"),
    ("generator_grpc", "generator (gRPC Generate)"),
    ("generator_queue", "  slot wait"),
    ("generator_ttft", "  time to first token"),
]


def _case(cases: list[dict[str, Any]], route: str, clients: int) -> dict[str, Any] | None:
    return next((c for c in cases if c["route"] == route and c["clients"] == clients), None)


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    c = _case(cases, "/v1/search", 32)
    if c and c.get("rps_ratio") is not None:
        out.append(
            {
                "target": "/v1/search, 32 clients: throughput ≥ 95% of one process",
                "measured": f"{c['rps_ratio'] * 100:.1f}%",
                "met": c["rps_ratio"] >= 0.95,
            }
        )
    ratio = cpu_ratio(c) if c else None
    if ratio is not None:
        out.append(
            {
                "target": "/v1/search, 32 clients: CPU per request ≤ 1.25× one process",
                "measured": f"{ratio:.2f}×",
                "met": ratio <= 1.25,
            }
        )
    c = _case(cases, "/v1/search", 1)
    if c and c.get("added_p50_ms") is not None:
        out.append(
            {
                "target": "/v1/search, 1 client: added p50 ≤ 3 ms",
                "measured": f"{c['added_p50_ms']:+.2f} ms",
                "met": c["added_p50_ms"] <= 3.0,
            }
        )
    for clients in (1, 4):
        c = _case(cases, "/v1/query", clients)
        if c and c.get("rps_ratio") is not None:
            out.append(
                {
                    "target": f"/v1/query, {clients} client{'s' if clients > 1 else ''}: throughput within 5% "
                    "of one process",
                    "measured": f"{c['rps_ratio'] * 100:.1f}%",
                    "met": c["rps_ratio"] >= 0.95,
                }
            )
    return out


def cpu_ratio(case: dict[str, Any]) -> float | None:
    """CPU per request of the four services over the one process's, each with its load generator."""
    a = case["single_process"]["cpu_ms_per_request"].get("total")
    b = case["services"]["cpu_ms_per_request"].get("total")
    return round(b / a, 3) if a and b else None


def _fmt(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    cases = result["cases"]
    st = result["settings"]
    lines = [
        f"![one process vs four services]({path.with_suffix('.png').name})",
        "",
        f"Measured {result['taken_at']} on {result['machine']['cpus']} CPUs with "
        f"`{result.get('command', 'python bench/e2e_bench.py')}` "
        f"(closed loop on 127.0.0.1, warm-up excluded, {st['rounds']} alternating rounds per system; /v1/search "
        f"k {st['k']}, /v1/query k {st['query_k']} and max_tokens {st['max_tokens']} at temperature 0). Corpus "
        f"{result['corpus']['documents']} documents / {result['corpus']['ingest']['points']} chunks, the same "
        f"collection copied to both. Threads, both cases: "
        f"{', '.join(f'{k} {v}' for k, v in result['threads'].items() if k != 'api')}; "
        f"{', '.join(f'{k}={v}' for k, v in result['env'].items() if k.startswith('OMP'))}. "
        "(a) = one process, (b) = four services; CPU = all processes of the system plus the load generator. "
        f"Load average (1 min) {_load(result)}.",
        "",
        "| route | clients | one process req/s | p50 / p95 / p99 ms | four services req/s | p50 / p95 / p99 ms "
        "| req/s (b)/(a) | added p50 ms | CPU ms / request (a / b) | errors (a / b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        a, b = c["single_process"], c["services"]
        lines.append(
            f"| `{c['route']}` | {c['clients']} | {a['rps']:.1f} | "
            f"{_fmt(a.get('p50_ms'))} / {_fmt(a.get('p95_ms'))} / {_fmt(a.get('p99_ms'))} | {b['rps']:.1f} | "
            f"{_fmt(b.get('p50_ms'))} / {_fmt(b.get('p95_ms'))} / {_fmt(b.get('p99_ms'))} | "
            f"{_fmt(c.get('rps_ratio'), 2)} | {_fmt(c.get('added_p50_ms'), 2)} | "
            f"{_fmt(a['cpu_ms_per_request'].get('total'))} / {_fmt(b['cpu_ms_per_request'].get('total'))} | "
            f"{a['error_count']} / {b['error_count']} |"
        )
    if result.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---:|:-:|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in result["targets"]]
    lines += [
        "",
        "Mean time per request at each hop, ms, from the services' own histograms (one process / four services):",
        "",
    ]
    header = "| stage | " + " | ".join(f"`{c['route'].split('/')[-1]}` c={c['clients']}" for c in cases) + " |"
    lines += [header, "|---|" + "---:|" * len(cases)]
    for key, label in HOPS:
        cells = []
        seen = False
        for c in cases:
            a = c["single_process"]["breakdown_ms"].get(key)
            b = c["services"]["breakdown_ms"].get(key)
            seen = seen or a is not None or b is not None
            digits = 1 if key == "embedder_batch_size" else 2
            cells.append(f"{_fmt(a, digits)} / {_fmt(b, digits)}")
        if seen:
            lines.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | " + " | ".join(cells) + " |")
    lines += ["", *_cpu_table(cases), "", *_notes(cases)]
    path.write_text("\n".join(lines) + "\n")


def _cpu_table(cases: list[dict[str, Any]]) -> list[str]:
    """CPU ms per request of each process (user + system, all threads, from /proc), one process against four."""
    search = [c for c in cases if c["route"] == "/v1/search"]
    if not search:
        return []
    names = ["single_process", "api", "retriever", "embedder", "load_generator"]
    labels = {"single_process": "one process (a)", "load_generator": "load generator"}
    lines = [
        "CPU ms per request of each process, `/v1/search` (a = one process, b = four services):",
        "",
        "| process | " + " | ".join(f"c={c['clients']} (a)" + f" | c={c['clients']} (b)" for c in search) + " |",
        "|---|" + "---:|" * (2 * len(search)),
    ]
    for name in names:
        cells = []
        for c in search:
            a, b = c["single_process"]["cpu_ms_per_request"], c["services"]["cpu_ms_per_request"]
            cells += [_fmt(a.get(name), 2), _fmt(b.get(name), 2)]
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    totals = []
    for c in search:
        ratio = cpu_ratio(c)
        totals += [_fmt(c["single_process"]["cpu_ms_per_request"].get("total"), 2)]
        totals += [f"{_fmt(c['services']['cpu_ms_per_request'].get('total'), 2)} ({_fmt(ratio, 2)}×)"]
    lines.append("| **total** (b/a) | " + " | ".join(totals) + " |")
    return lines


def _load(result: dict[str, Any]) -> str:
    load = result["machine"].get("load_average_1m")
    return f"{load['start']} at the start, {load['end']} at the end" if load else "not recorded"


def _notes(cases: list[dict[str, Any]]) -> list[str]:
    """Where the extra time of the four services goes, in numbers taken from this run."""
    out = []
    c = _case(cases, "/v1/search", 1)
    if c and c.get("added_p50_ms") is not None:
        b = c["services"]["breakdown_ms"]
        out.append(
            f"- `/v1/search`, 1 client: the services add {c['added_p50_ms']:+.2f} ms at p50. The two gRPC hops cost "
            f"{_fmt(b.get('hop_api_to_retriever'), 2)} ms (api → retriever) and "
            f"{_fmt(b.get('hop_retriever_to_embedder'), 2)} ms (retriever → embedder) each, measured as the "
            "caller's view of the call minus the callee's own handling time."
        )
    for clients in (8, 32):
        c = _case(cases, "/v1/search", clients)
        if c:
            a, b = c["single_process"]["cpu_ms_per_request"], c["services"]["cpu_ms_per_request"]
            parts = ", ".join(f"{k} {v:.2f}" for k, v in b.items() if k not in ("total", "generator"))
            out.append(
                f"- `/v1/search`, {clients} clients: {_fmt(a.get('total'), 2)} ms of CPU per request in one process, "
                f"{_fmt(b.get('total'), 2)} ms in four ({parts}); req/s ratio {_fmt(c.get('rps_ratio'), 2)}."
            )
    for clients in (1, 4):
        c = _case(cases, "/v1/query", clients)
        if c:
            a, b = c["single_process"]["cpu_ms_per_request"], c["services"]["cpu_ms_per_request"]
            if a.get("total") and b.get("total"):
                extra = (b["total"] / a["total"] - 1) * 100
                who = f"{clients} client{'s' if clients > 1 else ''}"
                out.append(
                    f"- `/v1/query`, {who}: {a['total'] / 1000:.2f} s of CPU per answer in one process, "
                    f"{b['total'] / 1000:.2f} s in four ({extra:+.1f}%; generator "
                    f"{b.get('generator', 0) / 1000:.2f} s); req/s ratio {_fmt(c.get('rps_ratio'), 2)}."
                )
    return out


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    colors = {"single_process": "tab:blue", "services": "tab:orange"}
    routes = ["/v1/search", "/v1/query"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for col, route in enumerate(routes):
        cases = [c for c in result["cases"] if c["route"] == route]
        if not cases:
            continue
        xs = [c["clients"] for c in cases]
        lat, thr = axes[0][col], axes[1][col]
        for system, color in colors.items():
            for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
                ys = [c[system].get(q) for c in cases]
                lat.plot(xs, ys, style, marker="o", color=color, label=f"{NAMES[system]} {q.split('_')[0]}")
            thr.plot(xs, [c[system]["rps"] for c in cases], "-", marker="o", color=color, label=NAMES[system])
        for ax in (lat, thr):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        st = result["settings"]
        extra = f"k {st['query_k']}, max_tokens {st['max_tokens']}" if route == "/v1/query" else f"k {st['k']}"
        lat.set_title(f"{route} latency ({extra})")
        lat.set_ylabel("ms (log scale)")
        lat.set_yscale("log")
        lat.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        lat.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        thr.set_title(f"{route} throughput")
        thr.set_ylabel("requests / s")
        thr.set_ylim(bottom=0)
    fig.suptitle(
        f"ragline: one process vs four services over gRPC ({result['machine']['cpus']} CPUs, {result['taken_at']})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
