"""Print pins for installing into a prebuilt image: every distribution it already has, then ragline's for the rest."""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a constraints file, comments and blank lines dropped."""
    return [line for raw in path.read_text().splitlines() if (line := raw.split("#", 1)[0].strip())]


def line_name(line: str) -> str:
    return canonical(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])


def installed_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def pins(constraints: Path, overrides: list[Path] | None = None, installed: dict[str, str] | None = None) -> list[str]:
    """The image's own versions win (vLLM pins torch and friends); then the overrides; constraints.txt for the rest."""
    have = installed_versions() if installed is None else installed
    lines = [f"{name}=={version}" for name, version in sorted(have.items())]
    taken = set(have)
    for path in [*(overrides or []), constraints]:
        for line in requirement_lines(path):
            if line_name(line) not in taken:
                lines.append(line)
                taken.add(line_name(line))
    return lines


def mismatches(expected: Path, installed: dict[str, str] | None = None) -> list[str]:
    """Where the image differs from the file that says what it ships: `name: file X, image Y`."""
    have = installed_versions() if installed is None else installed
    out = []
    for line in requirement_lines(expected):
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{expected}: {line!r} is not of the form name==version")
        found = have.get(canonical(name))
        if found != version.strip():
            out.append(f"{canonical(name)}: {expected.name} says {version.strip()}, the image has {found or 'none'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("constraints", type=Path)
    parser.add_argument(
        "--override", action="append", type=Path, default=[], help="pins that win over constraints (not the image)"
    )
    parser.add_argument(
        "--expect", type=Path, help="name==version lines the image must already have; any difference fails"
    )
    args = parser.parse_args()
    if args.expect is not None and (wrong := mismatches(args.expect)):
        raise SystemExit(
            f"the base image is not what {args.expect} says it ships (ragline is tested against that file, "
            "tests/images): " + "; ".join(wrong)
        )
    sys.stdout.write("".join(f"{line}\n" for line in pins(args.constraints, args.override)))


if __name__ == "__main__":
    main()
