"""Print (or write into README.md) the table of the latest reliability figures, made from report.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def table(report: dict[str, Any]) -> str:
    lines = ["| test | figures | recorded (UTC) | load avg |", "|---|---|---|---|"]
    for test, entry in sorted(report.items()):
        figures = _fmt(entry.get("summary", {})).replace("|", "\\|")
        lines.append(
            f"| `{test}` | {figures} | {entry.get('recorded_at', '')} | {entry.get('loadavg_1m_at_end', '')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", default=str(HERE / "report.json"))
    parser.add_argument("--write", action="store_true", help="replace the table in tests/reliability/README.md")
    args = parser.parse_args()
    fresh = table(json.loads(Path(args.report).read_text()))
    if not args.write:
        print(fresh)
        return 0
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}\n{fresh}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
