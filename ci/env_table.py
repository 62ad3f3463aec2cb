"""Write (or check) every table of environment variables, generated from the settings classes.

One table per service README (that service's variables) and one of every variable in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "configuration.md"
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(services: list[str] | None = None) -> str:
    """Every variable of the given services (all when None); the service column only when there are several."""
    chosen = [(svc, cls) for svc, cls in settings_classes() if services is None or svc in services]
    several = len(chosen) > 1
    lines = (
        ["| service | variable | default | meaning |", "|---|---|---|---|"]
        if several
        else [
            "| variable | default | meaning |",
            "|---|---|---|",
        ]
    )
    for svc, cls in chosen:
        for var, (default, _, desc) in env_vars(cls).items():
            row = f"| `{var}` | {_cell(default)} | {_cell(desc)} |"
            lines.append(f"| {svc} {row}" if several else row)
    return "\n".join(lines)


def targets() -> dict[Path, str]:
    """Each generated document → the table it must hold between the markers."""
    out = {CONFIGURATION: table()}
    for svc, _, _ in SETTINGS[1:]:
        out[ROOT / "services" / svc / "README.md"] = table([svc])
    return out


def rewrite(text: str, fresh_table: str, path: Path) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{path.relative_to(ROOT)} has no {START} … {END} markers for its settings table")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{fresh_table}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the tables in place")
    args = parser.parse_args()
    stale = []
    for path, fresh_table in targets().items():
        text = path.read_text()
        fresh = rewrite(text, fresh_table, path)
        if fresh == text:
            continue
        if args.write:
            path.write_text(fresh)
        else:
            stale.append(str(path.relative_to(ROOT)))
    if stale:
        print(f"stale settings tables in {', '.join(stale)}: run `python ci/env_table.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
