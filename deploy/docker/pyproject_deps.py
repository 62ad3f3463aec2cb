"""Print the third-party dependencies of the given pyproject.toml files, one per line (image dependency layer)."""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(pyprojects: list[Path], exclude: set[str]) -> list[str]:
    """Requirements of every project, without the projects themselves and the excluded names, first seen first."""
    projects = [tomllib.loads(path.read_text())["project"] for path in pyprojects]
    skip = {canonical(p["name"]) for p in projects} | {canonical(name) for name in exclude}
    seen: dict[str, None] = {}
    for project in projects:
        for requirement in project.get("dependencies", []):
            match = _NAME.match(requirement)
            if match is None:
                raise SystemExit(f"cannot parse requirement {requirement!r}")
            if canonical(match.group(1)) not in skip:
                seen.setdefault(requirement.strip(), None)
    return list(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject", nargs="+", type=Path)
    parser.add_argument("--exclude", action="append", default=[], help="a distribution name to leave out")
    args = parser.parse_args()
    sys.stdout.write("".join(f"{line}\n" for line in dependencies(args.pyproject, set(args.exclude))))


if __name__ == "__main__":
    main()
