"""Debian root filesystems made by debootstrap, for the slow tests that run CityWatch on
a Debian system of its own: street poles reached over SSH (tests/ansible/poles.py), a
container with systemd as PID 1 (tests/systemd/container.py) and an arm64 pole run under
qemu's user-mode emulation (tests/arm64/).

A root is made once from the mirror this machine's apt is configured with and kept under
``$CITYWATCH_TEST_CACHE`` (default /var/tmp/citywatch-tests), in a folder named after a
hash of what went into it (suite, architecture, mirror, packages, the caller's revision
and extra key); a test works on a copy. A root of another architecture is made in two
stages: debootstrap's first stage here (``--foreign``: download and unpack), the second
inside the root, its programs run by ``qemu-<cpu>-static`` through binfmt_misc
(packages qemu-user-static and binfmt-support register the handlers).

Everything here needs root (chroot, mounts); ``missing_tools`` and ``foreign_support``
say why not, for a test to skip with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SUITE",
    "Phases",
    "RootSpec",
    "apt_mirror",
    "build_root",
    "cache_dir",
    "chroot_argv",
    "copy_sources",
    "foreign_support",
    "host_arch",
    "missing_tools",
    "run",
]

SUITE = "bookworm"
QEMU_CPU = {
    "arm64": "aarch64",
    "armhf": "arm",
    "armel": "arm",
    "amd64": "x86_64",
    "i386": "i386",
    "riscv64": "riscv64",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
}
"""Debian's architecture names and the CPU names of qemu's user-mode emulators."""
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


PROJECT = Path(__file__).resolve().parents[2]
SOURCE_IGNORE = (
    ".git",
    ".venv",
    "tests",
    "artifacts",
    "bench",
    "docs",
    "ansible",
    "var",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "node_modules",
)
"""What a release's wheel is not built from: checkouts, caches, tests, docs, playbooks,
downloaded models and build output."""


def copy_sources(dest: Path) -> Path:
    """A copy of the project's sources at ``dest`` (replacing what was there), for
    ``pip wheel``: building from the checkout itself would write build/ and *.egg-info
    into it while other tests import from it."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(PROJECT, dest, ignore=shutil.ignore_patterns(*SOURCE_IGNORE))
    return dest


def cache_dir() -> Path:
    return Path(os.environ.get("CITYWATCH_TEST_CACHE", "/var/tmp/citywatch-tests"))


def run(argv: Sequence[str], timeout: float = 600, **kwargs: object) -> str:
    """Run a command; its stdout, or RuntimeError with the end of its output."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return str(done.stdout)


def host_arch() -> str:
    """This machine's Debian architecture (``amd64``, ``arm64`` ...)."""
    return run(["dpkg", "--print-architecture"], timeout=30).strip()


def apt_mirror() -> str | None:
    """The URI this machine's apt takes Debian ``bookworm`` from (deb822 or one-line
    sources), or None."""
    sources = Path("/etc/apt")
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if (
                fields.get("enabled", "yes") != "no"
                and "deb" in fields.get("types", "").split()
                and SUITE in fields.get("suites", "").split()
            ):
                return fields["uris"].split()[0]
    lists = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and SUITE in words:
                return next(w for w in words[1:] if not w.startswith("["))
    return None


def missing_tools(tools: Sequence[str] = ("debootstrap",), *, why_root: str = "") -> str | None:
    """Why a root cannot be made (or used) here, or None: root, the tools, a mirror."""
    if os.geteuid() != 0:
        return why_root or "making a Debian root needs root (debootstrap, chroot, mounts)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh --tests installs it)"
    if apt_mirror() is None:
        return f"apt has no source for Debian {SUITE} to debootstrap from"
    return None


def _binfmt_entry(cpu: str) -> Path:
    return BINFMT / f"qemu-{cpu}"


def foreign_support(arch: str) -> str | None:
    """Why programs of ``arch`` cannot run here, or None. Mounts binfmt_misc when it is
    not (a container's /proc may lack it) and enables qemu's handler for the CPU when
    binfmt-support knows it but it is off."""
    cpu = QEMU_CPU.get(arch)
    if cpu is None:
        return f"no qemu user-mode emulator is known for the architecture {arch!r}"
    if shutil.which(f"qemu-{cpu}-static") is None:
        return (
            f"qemu-{cpu}-static is not installed (package qemu-user-static; "
            "scripts/setup.sh --tests installs it)"
        )
    if not (BINFMT / "status").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not (BINFMT / "status").exists():
            return (
                f"binfmt_misc cannot be mounted on {BINFMT} here "
                f"({(done.stderr or done.stdout).strip() or 'no message'}): the kernel "
                f"cannot hand {arch} programs to qemu-{cpu}-static"
            )
    entry = _binfmt_entry(cpu)
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(
            ["update-binfmts", "--enable", f"qemu-{cpu}"], capture_output=True, check=False
        )
    if not entry.exists():
        return (
            f"no binfmt_misc handler for {cpu} ({entry} is missing; packages "
            "qemu-user-static and binfmt-support register it)"
        )
    if (BINFMT / "status").read_text().strip() != "enabled":
        return "binfmt_misc is disabled on this machine (/proc/sys/fs/binfmt_misc/status)"
    lines = entry.read_text().splitlines()
    if "enabled" not in lines:
        return f"the binfmt_misc handler {entry} is disabled"
    return None


def _fixes_binary(arch: str) -> bool:
    """Whether the kernel opened the emulator when the handler was registered (flag F):
    then it works inside a chroot without a copy of the emulator there."""
    entry = _binfmt_entry(QEMU_CPU[arch])
    for line in entry.read_text().splitlines():
        if line.startswith("flags:"):
            return "F" in line.split(":", 1)[1]
    return False


@dataclass
class Phases:
    """Wall-clock times of a test's phases, printed as each ends (``pytest -s`` shows
    them; ``summary()`` gives them all in one line)."""

    label: str
    times: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - t0
            self.times[name] = self.times.get(name, 0.0) + took
            print(f"{self.label}: {name} {took:.1f} s", file=sys.stderr, flush=True)

    def summary(self) -> str:
        total = sum(self.times.values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.times.items())
        return f"{self.label}: {parts}; total {total:.0f} s"


@dataclass(frozen=True)
class RootSpec:
    """What a cached root is made of."""

    name: str
    """Prefix of its cache folder (``pole``, ``systemd`` ...); older roots of the same
    name are removed when a new one is made."""
    packages: tuple[str, ...]
    """What debootstrap installs besides the minimal base (``--include``)."""
    arch: str = ""
    """Debian architecture; empty: this machine's."""
    revision: int = 1
    """Bumped by the caller whenever what ``finish`` does changes."""
    extra_key: tuple[str, ...] = ()
    """Anything else that went into the root (e.g. packages ``finish`` downloads)."""

    def key(self, mirror: str) -> str:
        material = (
            self.name,
            self.revision,
            SUITE,
            self.arch,
            mirror,
            self.packages,
            self.extra_key,
        )
        return hashlib.sha256(repr(material).encode()).hexdigest()[:16]


def chroot_argv(
    root: Path, argv: Sequence[str], *, env: Mapping[str, str] | None = None, mounts: bool = True
) -> list[str]:
    """A command line that runs ``argv`` chrooted into ``root``, in an environment of
    ``PATH`` and ``env`` only. With ``mounts``: /dev, /proc, /sys and a tmpfs /run
    mounted in a mount namespace of its own (gone when its last process ends), so this
    machine's mounts are untouched; the network is this machine's (loopback included).
    Every step ``exec``s the next, so the command keeps the first process's pid."""
    inside = [
        "/usr/bin/env",
        "-i",
        f"PATH={ROOT_PATH}",
        *(f"{k}={v}" for k, v in (env or {}).items()),
        *argv,
    ]
    if not mounts:
        return ["chroot", str(root), *inside]
    r = str(root)
    script = (
        f'mount --make-rprivate / && mount --rbind /dev "{r}/dev" && '
        f'mount -t proc proc "{r}/proc" && mount -t sysfs sysfs "{r}/sys" && '
        f'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "{r}/run" && '
        f'exec chroot "{r}" "$@"'
    )
    return ["unshare", "--mount", "--", "sh", "-c", script, "sh", *inside]


def build_root(
    spec: RootSpec,
    finish: Callable[[Path], None] | None = None,
    *,
    phases: Phases | None = None,
    timeout: float = 1800,
) -> Path:
    """The cached root for ``spec``, made if missing: debootstrap (two stages for a
    foreign architecture), then ``finish(root)``. Raises RuntimeError with debootstrap's
    or apt's words when it cannot be made."""
    mirror = apt_mirror()
    if mirror is None:
        raise RuntimeError(f"apt has no source for Debian {SUITE} to debootstrap from")
    arch = spec.arch or host_arch()
    label = spec.name if not spec.arch else f"{spec.name}-{arch}"
    image = cache_dir() / f"{label}-{SUITE}-{spec.key(mirror)}"
    if (image / ".complete").exists():
        return image
    foreign = arch != host_arch()
    if foreign:
        why = foreign_support(arch)
        if why:
            raise RuntimeError(why)
    timed = phases or Phases(label)
    cache_dir().mkdir(parents=True, exist_ok=True)
    building = image.with_name(image.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    argv = ["debootstrap", "--variant=minbase", f"--arch={arch}"]
    if spec.packages:
        argv.append(f"--include={','.join(spec.packages)}")
    try:
        if foreign:
            with timed(f"debootstrap first stage ({arch}, download and unpack)"):
                run([*argv, "--foreign", SUITE, str(building), mirror], timeout=timeout)
            # dpkg's fsyncs cost more than usual under emulation; a test root that is
            # lost in a crash is made again.
            unsafe = building / "etc/dpkg/dpkg.cfg.d/unsafe-io"
            unsafe.parent.mkdir(parents=True, exist_ok=True)
            unsafe.write_text("force-unsafe-io\n")
            if not _fixes_binary(arch):
                emulator = shutil.which(f"qemu-{QEMU_CPU[arch]}-static")
                assert emulator is not None
                shutil.copy2(emulator, building / "usr/bin" / Path(emulator).name)
            with timed(f"debootstrap second stage ({arch}, under qemu)"):
                run(
                    chroot_argv(building, ["/debootstrap/debootstrap", "--second-stage"]),
                    timeout=timeout,
                )
        else:
            with timed("debootstrap"):
                run([*argv, SUITE, str(building), mirror], timeout=timeout)
        if finish is not None:
            with timed("finishing the root"):
                finish(building)
        (building / ".complete").write_text(
            f"{SUITE} {arch} {mirror} {' '.join(spec.packages)} {' '.join(spec.extra_key)}\n"
        )
        shutil.rmtree(image, ignore_errors=True)
        building.rename(image)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    # Roots of older package lists are not used again.
    for old in cache_dir().glob(f"{label}-{SUITE}-*"):
        if old != image and ".building-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return image
