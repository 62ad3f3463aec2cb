"""Print (or check) the README's table of every environment variable, generated from the settings classes."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"

SETTINGS = [
    ("all services", "ragline_common.settings", "ReleaseSettings"),
    ("embedder", "ragline_embedder.settings", "EmbedderSettings"),
    ("retriever", "ragline_retriever.settings", "RetrieverSettings"),
    ("generator", "ragline_generator.settings", "GeneratorSettings"),
    ("api", "ragline_api.settings", "ApiSettings"),
]


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    return [(svc, getattr(importlib.import_module(mod), cls)) for svc, mod, cls in SETTINGS]


def env_vars(cls: type[BaseSettings]) -> dict[str, tuple[str, str, str]]:
    """name → (default, required flag, description) for every field of a settings class."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    out = {}
    for name, field in cls.model_fields.items():
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        if field.is_required():
            default = "**required**"
        default = default.replace("SecretStr('')", "''")
        out[(prefix + name).upper()] = (default, str(field.is_required()), field.description or "")
    return out


def table() -> str:
    lines = ["| service | variable | default | meaning |", "|---|---|---|---|"]
    for svc, cls in settings_classes():
        for var, (default, _, desc) in env_vars(cls).items():
            desc, default = desc.replace("|", "\\|"), default.replace("|", "\\|")
            lines.append(f"| {svc} | `{var}` | {default} | {desc} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    fresh = f"{head}{START}\n{table()}\n{END}{tail}"
    if args.write:
        README.write_text(fresh)
        return 0
    if fresh != text:
        print("README.md's environment table is stale: run `python ci/env_table.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
