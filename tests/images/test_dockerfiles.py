"""Dockerfiles, compose, the vLLM pins and the generated stubs agree, read from the files (no build)."""

from __future__ import annotations

import posixpath
import re
import shlex
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.images.envs import DOCKER, ROOT, VLLM_IMAGE_SET, ImageEnv, Instruction, arg_default, dockerfiles, stages

sys.path.insert(0, str(DOCKER))
from image_constraints import line_name, mismatches, pins, requirement_lines  # noqa: E402

pytestmark = pytest.mark.unit

VLLM_DOCKERFILE = ROOT / "services" / "generator" / "Dockerfile.vllm"
VLLM_OVERRIDES = DOCKER / "vllm-constraints.txt"
STUBS = ROOT / "libs" / "proto" / "src" / "ragline"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "deploy" / "compose" / "ci.override.yml"]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def pinned(path: Path, name: str) -> str:
    for line in requirement_lines(path):
        if line_name(line) == name:
            return line.partition("==")[2]
    raise AssertionError(f"{path.name} pins no {name}")


def python_c_code(dockerfile: Path) -> list[str]:
    """The code of every `python -c` / `python3 -c` in the Dockerfile's RUN lines."""
    out = []
    for stage in stages(dockerfile):
        for ins in stage:
            if ins.keyword != "RUN":
                continue
            for part in ins.args.split("&&"):
                tokens = shlex.split(part)
                if len(tokens) >= 3 and tokens[0] in {"python", "python3"} and tokens[1] == "-c":
                    out.append(tokens[2])
    return out


def test_every_service_dockerfile_is_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in dockerfiles()}
    assert {f"services/{s}/Dockerfile" for s in ("api", "embedder", "generator", "retriever")} <= names
    assert str(VLLM_DOCKERFILE.relative_to(ROOT)) in names


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_build_check_imports_what_the_pod_imports_at_start(dockerfile: Path) -> None:
    """`python -m ragline_<svc>` runs <pkg>.__main__, which imports the stubs: the build must import it too."""
    env = ImageEnv.from_dockerfile(dockerfile)
    entrypoint = [ins for ins in stages(dockerfile)[-1] if ins.keyword == "ENTRYPOINT"]
    assert entrypoint and env.package in entrypoint[-1].args, f"{dockerfile}: ENTRYPOINT does not run {env.package}"
    imports = [re.findall(r"\bimport ([\w., ]+)", code) for code in python_c_code(dockerfile)]
    modules = {m.strip() for found in imports for group in found for m in group.split(",")}
    assert f"{env.package}.__main__" in modules, f"{dockerfile}: no build step imports {env.package}.__main__"


def test_vllm_extra_dockerfile_and_dependency_set_name_one_release() -> None:
    image = arg_default(VLLM_DOCKERFILE, "VLLM_IMAGE")
    assert image is not None and re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", image), image
    tag = image.rpartition(":v")[2]
    extras = tomllib.loads((ROOT / "services" / "generator" / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["vllm"] == [f"vllm=={tag}"], f"the vllm extra must pin the image's release {tag}: {extras['vllm']}"
    assert f"# image: {image}\n" in VLLM_IMAGE_SET.read_text(), f"{VLLM_IMAGE_SET.name} does not describe {image}"


def test_stub_gencode_loads_under_every_image_protobuf_and_grpcio() -> None:
    """A protobuf runtime refuses gencode newer than itself; grpc stubs refuse a grpcio older than their tools."""
    runtimes = {
        "constraints.txt": pinned(ROOT / "constraints.txt", "protobuf"),
        "vllm": pinned(VLLM_IMAGE_SET, "protobuf"),
    }
    grpcios = {"constraints.txt": pinned(ROOT / "constraints.txt", "grpcio")}
    pb2 = sorted(STUBS.rglob("*_pb2.py"))
    grpc_py = sorted(STUBS.rglob("*_pb2_grpc.py"))
    assert pb2 and len(pb2) == len(grpc_py)
    for path in pb2:
        match = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())
        assert match, f"{path}: no runtime version check found"
        gencode = tuple(int(g) for g in match.groups())
        for where, runtime in runtimes.items():
            assert version(runtime) >= gencode, f"{path.name}: gencode {gencode} is newer than {where}'s {runtime}"
    for path in grpc_py:
        match = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
        assert match, f"{path}: no GRPC_GENERATED_VERSION"
        for where, grpcio in grpcios.items():
            assert version(grpcio) >= version(match.group(1)), f"{path.name} needs grpcio>={match.group(1)} ({where})"


def test_vllm_overrides_name_nothing_the_image_ships() -> None:
    """The image's own versions win in image_constraints.py: an override of one of them would be ignored."""
    shipped = {line_name(line) for line in requirement_lines(VLLM_IMAGE_SET)}
    overridden = {line_name(line) for line in requirement_lines(VLLM_OVERRIDES)}
    assert overridden and not overridden & shipped


def test_image_constraints_order_image_then_overrides_then_constraints(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# comment\nprotobuf==7.36.2\ngrpcio==1.85.1\npydantic-settings==2.16.3\n")
    overrides = tmp_path / "overrides.txt"
    overrides.write_text("pydantic_settings==2.15.0  # fits\n")
    got = pins(constraints, [overrides], installed={"protobuf": "6.32.1"})
    assert got == ["protobuf==6.32.1", "pydantic_settings==2.15.0", "grpcio==1.85.1"]


def test_image_constraints_expect_names_every_difference(tmp_path: Path) -> None:
    expected = tmp_path / "image.txt"
    expected.write_text("# image: x\nprotobuf==6.32.1\nfastapi==0.118.0\nuvloop==0.21.0\n")
    have = {"protobuf": "6.32.1", "fastapi": "0.119.0"}
    assert mismatches(expected, have) == [
        "fastapi: image.txt says 0.118.0, the image has 0.119.0",
        "uvloop: image.txt says 0.21.0, the image has none",
    ]


def _user(stage: list[Instruction]) -> str:
    users = [ins.args.split(":")[0] for ins in stage if ins.keyword == "USER"]
    assert users, "the final stage sets no USER"
    return users[-1]


def owned_dirs(dockerfile: Path) -> dict[str, str]:
    """Directories the final stage creates with an owner: COPY --chown=<uid> … <dest>, and
    `mkdir -p <dirs>` followed by `chown [-R] <uid>[:<gid>] <paths>` in one RUN."""
    owned: dict[str, str] = {}
    for ins in stages(dockerfile)[-1]:
        tokens = shlex.split(ins.args)
        if ins.keyword == "COPY":
            chown = next((t.split("=", 1)[1] for t in tokens if t.startswith("--chown=")), None)
            if chown:
                owned[posixpath.normpath(tokens[-1])] = chown.split(":")[0]
        if ins.keyword == "RUN":
            created: set[str] = set()
            for part in ins.args.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["mkdir", "-p"]:
                    created.update(posixpath.normpath(w) for w in words[2:])
                if words and words[0] == "chown":
                    args = [w for w in words[1:] if not w.startswith("-")]
                    recursive = "-R" in words
                    uid, paths = args[0].split(":")[0], [posixpath.normpath(p) for p in args[1:]]
                    for path in paths:
                        owned[path] = uid
                        if recursive:
                            for made in created:
                                if PurePosixPath(made).is_relative_to(path):
                                    for parent in [PurePosixPath(made), *PurePosixPath(made).parents]:
                                        if parent.is_relative_to(path):
                                            owned[str(parent)] = uid
    return owned


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!override, !reset) read as the plain value they tag."""


for _tag in ("!override", "!reset"):
    ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )


def compose_mounts() -> list[tuple[str, str, str]]:
    """(service, Dockerfile, target) of every named-volume mount of a service that compose builds."""
    services: dict[str, dict[str, object]] = {}
    for path in COMPOSE_FILES:
        for name, spec in (yaml.load(path.read_text(), Loader=ComposeLoader).get("services") or {}).items():
            merged = services.setdefault(name, {})
            for key, value in (spec or {}).items():
                merged[key] = value
    out = []
    for name, spec in services.items():
        build = spec.get("build")
        if not isinstance(build, dict):
            continue
        for volume in spec.get("volumes") or []:
            source, _, rest = str(volume).partition(":")
            if source.startswith((".", "/", "~")):
                continue  # a bind mount: its owner is the host's
            out.append((name, str(build["dockerfile"]), rest.split(":")[0]))
    return out


def test_compose_has_named_volumes_on_built_images() -> None:
    assert {("generator-vllm", "/models/huggingface"), ("retriever", "/data")} <= {
        (s, t) for s, _, t in compose_mounts()
    }


@pytest.mark.parametrize("service,dockerfile,target", compose_mounts(), ids=lambda v: str(v))
def test_every_compose_volume_target_belongs_to_the_image_user(service: str, dockerfile: str, target: str) -> None:
    """A named volume starts as a copy of the image's directory, owner included: a missing directory comes up
    root-owned, and the service (USER 10001, no capabilities) cannot write its cache or store there."""
    path = ROOT / dockerfile
    user = _user(stages(path)[-1])
    owned = owned_dirs(path)
    assert owned.get(posixpath.normpath(target)) == user, (
        f"{service}: {target} is mounted as a volume but {dockerfile} does not create it owned by USER {user} "
        f"(owned directories: {owned})"
    )
