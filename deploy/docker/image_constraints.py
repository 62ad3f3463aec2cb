"""Print pins for installing into a prebuilt image: every distribution it already has, then ragline's for the rest."""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path) -> list[str]:
    """The image's own versions win (vLLM pins torch and friends); constraints.txt covers what it lacks."""
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    lines = [f"{name}=={version}" for name, version in sorted(installed.items())]
    for raw in constraints.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and canonical(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]) not in installed:
            lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("constraints", type=Path)
    args = parser.parse_args()
    sys.stdout.write("".join(f"{line}\n" for line in pins(args.constraints)))


if __name__ == "__main__":
    main()
