"""Each image's Python environment rebuilt from its Dockerfile's install steps in a venv, cached by their inputs."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Outside the checkout, keyed by every input: a new clone on the same machine (CI) reuses the venvs that its inputs
# still match instead of spending minutes rebuilding the same ones; a new machine builds them once.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ragline" / "image-envs"
DOCKER = ROOT / "deploy" / "docker"
sys.path.insert(0, str(DOCKER))
from image_constraints import canonical, line_name, requirement_lines  # noqa: E402

# The GPU image's own packages (what vllm/vllm-openai ships): the environment starts from them, as the image does.
VLLM_IMAGE_SET = DOCKER / "vllm-image.txt"
PIP_TIMEOUT_SECONDS = 900
# A venv built by an older layout of this module is rebuilt.
LAYOUT = "2"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions(dockerfile: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comment lines dropped (as Docker does)."""
    out: list[Instruction] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def stages(dockerfile: Path) -> list[list[Instruction]]:
    """Instructions per build stage (the ARGs before the first FROM are left out)."""
    result: list[list[Instruction]] = []
    for ins in instructions(dockerfile):
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_default(dockerfile: Path, name: str) -> str | None:
    for ins in instructions(dockerfile):
        if ins.keyword == "ARG" and ins.args.partition("=")[0] == name:
            return ins.args.partition("=")[2].strip('"') or None
    return None


def _commands(dockerfile: Path) -> list[list[str]]:
    """Every shell command of every RUN, split on && and tokenized."""
    out: list[list[str]] = []
    for ins in instructions(dockerfile):
        if ins.keyword == "RUN":
            out.extend(shlex.split(part) for part in ins.args.split("&&") if part.strip())
    return out


@dataclass(frozen=True)
class ImageEnv:
    """What a Dockerfile installs into the Python environment of its final stage, read from its RUN lines."""

    dockerfile: str
    package: str
    tools: tuple[str, ...]  # pip and setuptools as the Dockerfile pins them in its venv
    base_sets: tuple[str, ...]  # requirement files of packages the base image already has
    torch: str | None  # installed first, alone, and pinned (the embedder)
    pyprojects: tuple[str, ...]
    excludes: tuple[str, ...]
    image_constraints_args: tuple[str, ...] | None  # the image's own versions win over constraints.txt
    no_deps: tuple[str, ...]  # installed after, with --no-deps -c constraints.txt

    @classmethod
    def from_dockerfile(cls, dockerfile: Path) -> ImageEnv:
        pyprojects: list[str] = []
        excludes: list[str] = []
        no_deps: list[str] = []
        image_constraints: tuple[str, ...] | None = None
        for cmd in _commands(dockerfile):
            script = next((i for i, tok in enumerate(cmd) if tok.endswith("pyproject_deps.py")), None)
            if script is not None:
                rest = cmd[script + 1 : cmd.index(">")] if ">" in cmd else cmd[script + 1 :]
                for i, tok in enumerate(rest):
                    if tok == "--exclude":
                        excludes.append(rest[i + 1])
                    elif tok.endswith("pyproject.toml"):
                        pyprojects.append(tok)
            script = next((i for i, tok in enumerate(cmd) if tok.endswith("image_constraints.py")), None)
            if script is not None:
                image_constraints = tuple(cmd[script + 1 : cmd.index(">")])
            if "install" in cmd and "--no-deps" in cmd and "-c" in cmd and "constraints.txt" in cmd:
                no_deps.extend(tok for tok in cmd[cmd.index("constraints.txt") + 1 :] if not tok.startswith("-"))
        if not pyprojects:
            raise ValueError(f"{dockerfile}: no `pyproject_deps.py <pyproject.toml>...` step found")
        service = Path(pyprojects[-1]).parent.name
        torch = arg_default(dockerfile, "TORCH_VERSION")
        tools = tuple(
            f"{name}=={version}"
            for name, arg in (("pip", "PIP_VERSION"), ("setuptools", "SETUPTOOLS_VERSION"))
            if (version := arg_default(dockerfile, arg))
        )
        return cls(
            dockerfile=str(dockerfile.relative_to(ROOT)),
            package=f"ragline_{service}",
            tools=tools,
            base_sets=(str(VLLM_IMAGE_SET.relative_to(ROOT)),) if image_constraints is not None else (),
            torch=torch,
            pyprojects=tuple(pyprojects),
            excludes=tuple(excludes),
            image_constraints_args=image_constraints,
            no_deps=tuple(no_deps),
        )

    def inputs(self) -> list[Path]:
        """The files whose content decides the environment, constraints.txt aside (see constraint_pins)."""
        files = [DOCKER / "pyproject_deps.py", DOCKER / "image_constraints.py"]
        files += [ROOT / p for p in (*self.base_sets, *self.pyprojects)]
        files += [ROOT / a for a in self.image_constraints_args or () if (ROOT / a).is_file()]
        return files

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps([LAYOUT, sys.version, asdict(self)]).encode())
        for path in self.inputs():
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def source_path(self) -> str:
        """Where the image puts ragline's code (/opt/app): the source folders of the three packages."""
        service = Path(self.pyprojects[-1]).parent
        return os.pathsep.join(str(ROOT / p / "src") for p in ("libs/proto", "libs/common", str(service)))


def constraint_pins(names: set[str]) -> list[str]:
    """constraints.txt's lines for these distributions: most of the file pins test tools no image installs, and
    a change there must not rebuild every image's venv. With the same requirements and the same pins for every
    distribution the last build installed, pip resolves the same set."""
    return sorted(line for line in requirement_lines(ROOT / "constraints.txt") if canonical(line_name(line)) in names)


def _reusable(target: Path) -> bool:
    try:
        ready = json.loads((target / "ready.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(ready.get("constraints") == constraint_pins(set(ready.get("installed", {}))))


def _run(cmd: list[str], log: list[str]) -> None:
    log.append("$ " + shlex.join(cmd))
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False)
    log.append(done.stdout[-4000:] + done.stderr[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"building an image environment failed at `{shlex.join(cmd)}`:\n" + "\n".join(log))


def build(env: ImageEnv) -> Path:
    """The venv for env, built once per distinct set of inputs under CACHE; returns its python."""
    name = Path(env.dockerfile).parent.name + ("-" + Path(env.dockerfile).name.partition(".")[2]).rstrip("-")
    target = CACHE / f"{name}-{env.key()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    # One builder per image at a time, across pytest sessions: the others wait, then reuse its venv.
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(env, name, target)


def _build_locked(env: ImageEnv, name: str, target: Path) -> Path:
    python = target / "bin" / "python"
    if _reusable(target):
        return python
    # A venv's files name its own path: it is built where it lives, and marked ready last.
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    log: list[str] = []
    try:
        _run([sys.executable, "-m", "venv", str(target)], log)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if env.tools:
            _run([*pip, *env.tools], log)
        for base in env.base_sets:
            _run([*pip, "-r", str(ROOT / base)], log)
        constraints = ["-c", str(ROOT / "constraints.txt")]
        if env.torch:
            _run([*pip, "--no-deps", f"torch=={env.torch}"], log)
            (target / "torch-pin.txt").write_text(f"torch=={env.torch}\n")
            constraints += ["-c", str(target / "torch-pin.txt")]
        if env.image_constraints_args is not None:
            script = str(DOCKER / "image_constraints.py")
            done = subprocess.run(
                [str(python), script, *env.image_constraints_args],
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"image_constraints.py {' '.join(env.image_constraints_args)}: {done.stderr}")
            (target / "image-constraints.txt").write_text(done.stdout)
            constraints = ["-c", str(target / "image-constraints.txt")]
        deps = [str(python), str(DOCKER / "pyproject_deps.py"), *env.pyprojects]
        for name_ in env.excludes:
            deps += ["--exclude", name_]
        requirements = subprocess.run(deps, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
        (target / "requirements.txt").write_text(requirements)
        _run([*pip, *constraints, "-r", str(target / "requirements.txt")], log)
        if env.no_deps:
            _run([*pip, "--no-deps", "-c", str(ROOT / "constraints.txt"), *env.no_deps], log)
        have = installed(python)
        ready = {
            "env": asdict(env),
            "build_seconds": round(time.perf_counter() - started, 1),
            "installed": have,
            "constraints": constraint_pins(set(have)),
        }
        (target / "ready.json").write_text(json.dumps(ready, indent=1))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for stale in CACHE.glob(f"{name}-*"):  # earlier inputs of the same image: gigabytes nothing will use
        if stale != target and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    return python


def dockerfiles() -> list[Path]:
    return sorted((ROOT / "services").glob("*/Dockerfile*"))


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return {canonical(d["name"]): d["version"] for d in json.loads(out)}
