"""Generate Python stubs for proto/ into libs/proto/src with grpcio-tools; `--check` fails when they are stale."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "src"


def generate(out: Path) -> None:
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {p.parent for p in out.rglob("*_pb2.py")}:
        d = package_dir
        while d != out:
            (d / "__init__.py").touch()
            d = d.parent


def tree(base: Path) -> dict[str, Path]:
    if not base.exists():
        return {}
    return {str(p.relative_to(base)): p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            want, have = tree(fresh / "ragline"), tree(OUT_DIR / "ragline")
            stale = sorted(
                k
                for k in want.keys() | have.keys()
                if k not in want or k not in have or not filecmp.cmp(want[k], have[k], shallow=False)
            )
            if stale:
                print("stale generated stubs (run `make proto`): " + ", ".join(stale), file=sys.stderr)  # noqa: T201
                return 1
            return 0
        shutil.rmtree(OUT_DIR / "ragline", ignore_errors=True)
        shutil.copytree(fresh / "ragline", OUT_DIR / "ragline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
