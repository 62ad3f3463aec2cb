"""Generate Python stubs for proto/ into libs/proto/src with a pinned grpcio-tools; `--check` fails when stale."""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "src"
# The oldest protobuf runtime an image ships decides the generator: vllm/vllm-openai:v0.11.0 has protobuf 6.32.1,
# ours have 7.x. A runtime refuses gencode newer than itself and accepts any older one, so the stubs come from the
# oldest grpcio-tools whose protoc writes protobuf 6 gencode (6.30.0); they also need only grpcio >= this version.
GRPCIO_TOOLS_VERSION = "1.72.1"
# Its own folder, apart from the project's venv: grpcio-tools 1.72 requires protobuf < 7, which the venv has.
TOOLS_DIR = ROOT / "var" / "cache" / f"grpcio-tools-{GRPCIO_TOOLS_VERSION}"
PIP_TIMEOUT_SECONDS = 600


def tools_dir() -> Path:
    """The pinned grpcio-tools, installed once (without dependencies: only its protoc and plugin are used)."""
    if (TOOLS_DIR / "grpc_tools").is_dir():
        return TOOLS_DIR
    TOOLS_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TOOLS_DIR.name + ".", dir=TOOLS_DIR.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
             "--target", str(staging), f"grpcio-tools=={GRPCIO_TOOLS_VERSION}"],
            check=True,
            timeout=PIP_TIMEOUT_SECONDS,
        )  # fmt: skip
        try:
            staging.rename(TOOLS_DIR)
        except OSError:  # another run installed it first
            if not (TOOLS_DIR / "grpc_tools").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TOOLS_DIR


def generate(out: Path) -> None:
    tools = tools_dir()
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        f"-I{PROTO_DIR}",
        f"-I{tools / 'grpc_tools' / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    # A child process, so that the pinned grpc_tools is imported instead of any other one the venv may hold.
    code = (
        "import sys, grpc_tools\n"
        "from grpc_tools import protoc\n"
        f"assert grpc_tools.__file__.startswith({str(tools)!r}), grpc_tools.__file__\n"
        "sys.exit(protoc.main(['grpc_tools.protoc', *sys.argv[1:]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tools)}
    if subprocess.run([sys.executable, "-c", code, *args], env=env, check=False).returncode != 0:
        raise SystemExit(f"protoc (grpcio-tools {GRPCIO_TOOLS_VERSION}) failed")
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
