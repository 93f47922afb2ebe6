"""An arm64 Debian sysroot with the phone runtimes' aarch64 wheels, prepared once and cached.

Built without debootstrap and without changing the host's package setup: a private apt configuration
(its own lists, cache and empty dpkg status) resolves and downloads the arm64 packages, ``dpkg-deb -x``
unpacks them, and the host's pip installs the pinned aarch64 wheels with ``--target``. torch's aarch64
wheel on PyPI is a CUDA build; its NVIDIA libraries are never installed: every library the wheels need
and nothing provides gets a stand-in that defines the symbols and symbol versions asked of it (linked by
Debian's arm64 binutils, downloaded the same way), enough for the CPU runtime to load.

Each pinned CPU model gets a view of the sysroot with a /proc/cpuinfo and /sys/devices/system/cpu that
describe that model (its MIDR and the hwcaps qemu gives it): qemu 7.2 passes the x86 host's files
through, on which cpuinfo and oneDNN's CPU detection crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import commit, staging_dir

log = logging.getLogger("hrvit_mobile.arm64")

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRRORS = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
DEBIAN_PACKAGES = ("python3.11", "libstdc++6", "libatomic1")
# host-side (amd64) linker for the stand-in libraries
CROSS_BINUTILS = "binutils-aarch64-linux-gnu"
PYTHON = "/usr/bin/python3.11"
SITE = "/opt/hrvit-mobile/site-packages"
STANDINS = "/opt/hrvit-mobile/standins"
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# The runtimes phones use, as aarch64 wheels for CPython 3.11. executorch is the version the exporter
# pins; ai-edge-litert 1.4.0 is its last release with an aarch64 Linux wheel (the host runs 2.x); the
# rest is what the two runtimes import at load time.
WHEELS = (
    "executorch==1.5.1",
    "torch==2.13.0",
    "ai-edge-litert==1.4.0",
    "numpy==2.3.5",
    "flatbuffers==25.12.19",
    "typing-extensions==4.16.0",
    "sympy==1.14.0",
    "mpmath==1.3.0",  # executorch pins it
    "networkx==3.6.1",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "fsspec==2026.9.0",
    "filelock==4.3.2",
    "ruamel.yaml==0.19.1",
    "pyyaml==6.0.4",
    "packaging==26.4",
    "tabulate==0.10.0",
)
LAYOUT_VERSION = 1  # bump when the way the sysroot is built changes

# MIDR_EL1 of the CPU models qemu-user emulates (qemu's target/arm/cpu64.c). `max` is refused: no phone has
# it, its features change with the qemu version, and qemu 7.2's was seen computing ExecuTorch int8 wrongly
CPU_MIDR = {
    "cortex-a35": 0x411FD040,
    "cortex-a53": 0x410FD034,
    "cortex-a57": 0x411FD070,
    "cortex-a72": 0x410FD083,
    "cortex-a76": 0x414FD0B1,
    "neoverse-n1": 0x414FD0C1,
    "a64fx": 0x461F0010,
}
# Linux arm64 AT_HWCAP bits, in order (arch/arm64/include/uapi/asm/hwcap.h)
HWCAP_NAMES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
    "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()

Progress = Callable[[str], None]


class EmulationUnavailable(HRViTMobileError):
    """This host cannot run aarch64 code: the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Sysroot:
    """A prepared sysroot: ``root`` holds the arm64 files, ``manifest`` what went into it."""

    path: Path
    manifest: dict

    @property
    def root(self) -> Path:
        return self.path / "root"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hrvit-mobile" / "arm64-sysroot"


def sysroot_key() -> str:
    pins = {"suite": DEBIAN_SUITE, "debs": DEBIAN_PACKAGES, "wheels": WHEELS, "layout": LAYOUT_VERSION}
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12]


def check_cpu(cpu: str) -> str:
    if cpu not in CPU_MIDR:
        raise HRViTMobileError(
            f"unknown --cpu {cpu!r}; allowed: {', '.join(CPU_MIDR)} (qemu's 'max' is not a real core)")
    return cpu


def qemu_binary() -> str:
    """qemu-aarch64-static on PATH, or a one-line error saying how to install it."""
    exe = shutil.which("qemu-aarch64-static")
    if exe is None:
        raise EmulationUnavailable(
            "qemu-aarch64-static not found: this x86 host runs ARM64 kernels under qemu user-mode "
            "emulation; install it with `apt-get install qemu-user-static` (Debian/Ubuntu)")
    return exe


def check_host_tools() -> None:
    """apt-get and dpkg-deb (Debian/Ubuntu) build the sysroot; refuse in one line without them."""
    missing = [t for t in ("apt-get", "dpkg-deb", "readelf") if shutil.which(t) is None]
    if missing:
        raise EmulationUnavailable(
            f"{', '.join(missing)} not found: the ARM64 sysroot is built from Debian's arm64 packages with "
            "apt-get and dpkg-deb (and readelf from binutils); run on Debian/Ubuntu, or on an aarch64 host")


def prepare_sysroot(progress: Progress = log.info, cache: Path | None = None) -> Sysroot:
    """The cached sysroot for the pinned versions, built first when missing (about a minute and 1.4 GB)."""
    cache = cache or cache_root()
    final = cache / sysroot_key()
    manifest = final / "manifest.json"
    if manifest.exists():
        return Sysroot(final, json.loads(manifest.read_text()))
    check_host_tools()
    progress(f"preparing the ARM64 sysroot in {final} (once; later runs reuse it)")
    t0 = time.perf_counter()
    with staging_dir(cache, final.name) as stage:
        root = stage / "root"
        debs = _debian_packages(stage / "apt", root, progress)
        binutils = _cross_binutils(stage / "apt", stage / "binutils", progress)
        wheels = _wheels(root, progress)
        standins = _standins(root, binutils, progress)
        shutil.rmtree(stage / "apt")
        shutil.rmtree(stage / "binutils")
        seconds = time.perf_counter() - t0
        data = {"key": final.name, "suite": DEBIAN_SUITE, "debian_packages": debs, "wheels": wheels,
                "standins": standins, "build_seconds": round(seconds, 1),
                "size_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and
                                  not p.is_symlink())}
        (stage / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")  # last: marks it complete
        commit(stage, final)
    progress(f"ARM64 sysroot ready in {seconds:.0f} s, {data['size_bytes'] / 1e9:.2f} GB")
    return Sysroot(final, data)


# --------------------------------------------------------------------------------------------------
# Debian packages


def _apt_options(apt: Path, arch: str) -> list[str]:
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "state/status").touch()
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    signed = f" signed-by={keyring}" if Path(keyring).exists() else ""
    suites = {DEBIAN_MIRRORS[0]: DEBIAN_SUITE, DEBIAN_MIRRORS[1]: f"{DEBIAN_SUITE}-security"}
    (apt / "etc/sources.list").write_text(
        "".join(f"deb [arch=arm64,amd64{signed}] {url} {suite} main\n" for url, suite in suites.items()))
    return [
        "-o", f"APT::Architecture={arch}", "-o", "APT::Architectures::=arm64",
        "-o", "APT::Architectures::=amd64",
        "-o", f"Dir::State={apt / 'state'}", "-o", f"Dir::State::status={apt / 'state/status'}",
        "-o", f"Dir::Cache={apt / 'cache'}", "-o", f"Dir::Etc::sourcelist={apt / 'etc/sources.list'}",
        "-o", "Dir::Etc::sourceparts=-", "-o", f"Dir::Etc::preferencesparts={apt / 'etc/preferences.d'}",
        "-o", f"Dir::Etc::parts={apt / 'etc/apt.conf.d'}", "-o", "APT::Install-Recommends=false",
        "-o", "APT::Sandbox::User=root", "-q",
    ]


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EmulationUnavailable(f"{what} failed ({' '.join(cmd[:2])} ...): {tail[0]}")
    return res


def _debian_packages(apt: Path, root: Path, progress: Progress) -> dict[str, str]:
    """Download DEBIAN_PACKAGES and their dependencies for arm64 and unpack them into ``root``."""
    opts = _apt_options(apt, "arm64")
    progress(f"  apt: Debian {DEBIAN_SUITE} arm64 package lists")
    _run(["apt-get", *opts, "update"], "apt-get update (arm64 lists)")
    progress(f"  apt: downloading {', '.join(DEBIAN_PACKAGES)} and their dependencies (arm64)")
    _run(["apt-get", *opts, "install", "-y", "--download-only", *DEBIAN_PACKAGES], "apt-get download (arm64)")
    debs = sorted((apt / "cache/archives").glob("*.deb"))
    progress(f"  dpkg-deb: unpacking {len(debs)} packages")
    versions = {}
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")
    return versions


def _cross_binutils(apt: Path, dest: Path, progress: Progress) -> Path:
    """Debian's aarch64 binutils for the host (amd64), unpacked (not installed) into ``dest``."""
    opts = _apt_options(apt, "amd64")
    progress(f"  apt: downloading {CROSS_BINUTILS} (links the stand-in libraries)")
    archives = apt / "cache/archives"
    for old in archives.glob("*.deb"):
        old.unlink()
    _run(["apt-get", *opts, "install", "-y", "--download-only", "--no-install-recommends",
          f"{CROSS_BINUTILS}:amd64"], f"apt-get download {CROSS_BINUTILS}")
    for deb in archives.glob(f"{CROSS_BINUTILS}_*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
    return dest


# --------------------------------------------------------------------------------------------------
# wheels


def _wheels(root: Path, progress: Progress) -> dict[str, str]:
    target = root / SITE.lstrip("/")
    progress(f"  pip: aarch64 wheels ({', '.join(w for w in WHEELS[:4])}, ...) into {SITE}")
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    # --no-deps: torch's CUDA dependencies (GBs of NVIDIA libraries) are exactly what is not wanted
    cmd = [sys.executable, "-m", "pip", "install", "--progress-bar", "off", "--no-deps",
           "--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp",
           "--target", str(target), *WHEELS]
    # pip's own lines (which wheel it fetches, then the install) are the progress of a minutes-long step
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    last = "no output"
    for line in proc.stdout:
        line = line.strip()
        if line.startswith(("Collecting", "Installing collected", "Successfully installed")):
            progress(f"    {line[:100]}")
        last = line or last
    if proc.wait() != 0:
        raise EmulationUnavailable(f"pip install (aarch64 wheels) failed: {last}")
    return {w.split("==")[0]: w.split("==")[1] for w in WHEELS}


# --------------------------------------------------------------------------------------------------
# stand-ins for the libraries nothing provides (torch's CUDA dependencies)


def _dynamic_symbols(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(undefined non-weak (symbol, version)), defined symbol names) of an ELF file, read by readelf."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(path)], capture_output=True, text=True).stdout
    undefined, defined = [], []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":"):
            continue
        name, _, version = f[7].partition("@")
        version = version.lstrip("@")
        if f[6] == "UND":
            if name and f[4] != "WEAK":
                undefined.append((name, version))
        else:
            defined.append(name)
    return undefined, defined


def _needed(path: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(DT_NEEDED names, library -> symbol versions required of it) of an ELF file."""
    out = subprocess.run(["readelf", "-dV", "-W", str(path)], capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    versions: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.search(r"File: (\S+)\s+Cnt:", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags:", line)
        if m and current:
            versions.setdefault(current, set()).add(m.group(1))
    return needed, versions


def _elf_files(root: Path) -> Iterator[Path]:
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and (".so" in p.name or p.parent.name == "bin"):
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield p


def _standins(root: Path, binutils: Path, progress: Progress) -> dict[str, int]:
    """Link an empty-bodied library for every DT_NEEDED that nothing in ``root`` provides."""
    present = {p.name for p in root.rglob("*.so*")}
    needs: dict[str, set[str]] = {}
    undefined: set[tuple[str, str]] = set()
    defined: set[str] = set()
    files = list(_elf_files(root))
    progress(f"  readelf: symbols of {len(files)} ELF files")
    for p in files:
        names, versions = _needed(p)
        for n in names:
            needs.setdefault(n, set()).update(versions.get(n, ()))
        und, defs = _dynamic_symbols(p)
        undefined.update(und)
        defined.update(defs)
    missing = {n: v for n, v in needs.items() if n not in present}
    unresolved = {(s, v) for s, v in undefined if s not in defined}
    out = root / STANDINS.lstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    tools = sorted(binutils.rglob("aarch64-linux-gnu-ld.bfd"))
    if not tools:
        raise EmulationUnavailable(f"{CROSS_BINUTILS} did not unpack an aarch64-linux-gnu-ld.bfd")
    ld = tools[0]
    bfd = sorted(binutils.rglob("libbfd-*arm64.so"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(bfd[0].parent) if bfd else "")
    progress(f"  stand-ins for {len(missing)} libraries nothing provides: {', '.join(sorted(missing))}")
    counts = {}
    for lib, versions in sorted(missing.items()):
        # a versioned symbol goes to the library owning that version; unversioned ones to every
        # unversioned stand-in (the first found wins; none of them is ever called on the CPU path)
        symbols = sorted(s for s, v in unresolved if (v in versions if versions else v == ""))
        # each stand-in returns 1, the CUDA libraries' "invalid value"/"not initialized" error code
        body = "".join(f'.globl "{s}"\n.type "{s}", %function\n"{s}":\n  mov w0, #1\n  ret\n'
                       for s in symbols)
        asm = out / f"{lib}.s"
        asm.write_text(".text\n" + body)
        script = out / f"{lib}.map"
        nodes = "".join(f"{v} {{ global: *; }};\n" for v in sorted(versions))
        script.write_text(nodes or "{ global: *; };\n")
        obj = out / f"{lib}.o"
        _run([str(ld.with_name("aarch64-linux-gnu-as")), "-o", str(obj), str(asm)], f"as ({lib})", env=env)
        _run([str(ld), "-shared", "-soname", lib, "--version-script", str(script), "-o", str(out / lib),
              str(obj)], f"ld ({lib})", env=env)
        for p in (asm, script, obj):
            p.unlink()
        counts[lib] = len(symbols)
    return counts


# --------------------------------------------------------------------------------------------------
# per-CPU views and the emulated command


def _host_cpus() -> int:
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return int(text.split("-")[-1].split(",")[-1]) + 1
    return os.cpu_count() or 1


def hwcaps(qemu: str, sysroot: Sysroot, cpu: str) -> list[str]:
    """The AT_HWCAP feature names qemu gives ``cpu`` (read from the emulated process's auxv)."""
    code = ("import struct;d=open('/proc/self/auxv','rb').read();"
            "print(dict(struct.iter_unpack('<QQ',d)).get(16,0))")
    python = str(sysroot.root / PYTHON.lstrip("/"))
    res = _run([qemu, "-cpu", cpu, "-L", str(sysroot.root), python, "-S", "-c", code], f"qemu -cpu {cpu}")
    bits = int(res.stdout.strip())
    return [name for i, name in enumerate(HWCAP_NAMES) if bits >> i & 1]


def cpu_view(qemu: str, sysroot: Sysroot, cpu: str) -> tuple[Path, list[str]]:
    """A folder qemu takes as its -L prefix for ``cpu``: the sysroot plus that model's cpuinfo and sysfs."""
    view = sysroot.path / "cpu" / cpu
    marker = view / "features.json"
    if marker.exists():
        return view, json.loads(marker.read_text())
    features = hwcaps(qemu, sysroot, cpu)
    midr = CPU_MIDR[cpu]
    n = _host_cpus()
    with staging_dir(view.parent, cpu) as stage:
        for top in sysroot.root.iterdir():
            (stage / top.name).symlink_to(os.path.relpath(top, view))
        entry = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\n"
                 f"CPU implementer\t: {midr >> 24:#x}\nCPU architecture: 8\n"
                 f"CPU variant\t: {midr >> 20 & 0xF:#x}\nCPU part\t: {midr >> 4 & 0xFFF:#x}\n"
                 f"CPU revision\t: {midr & 0xF}\n\n")
        (stage / "proc").mkdir()
        (stage / "proc/cpuinfo").write_text("".join(f"processor\t: {i}\n{entry}" for i in range(n)))
        cpus = stage / "sys/devices/system/cpu"
        cpus.mkdir(parents=True)
        for name in ("possible", "present", "online"):
            (cpus / name).write_text(f"0-{n - 1}\n")
        (cpus / "kernel_max").write_text(f"{max(n - 1, 255)}\n")
        for i in range(n):
            d = cpus / f"cpu{i}"
            (d / "regs/identification").mkdir(parents=True)
            (d / "regs/identification/midr_el1").write_text(f"0x{midr:016x}\n")
            (d / "topology").mkdir()
            (d / "cache").mkdir()  # empty: the caches come from the model's tables, not the x86 host
            for name, value in (("physical_package_id", "0"), ("core_id", str(i)),
                                ("cluster_cpus_list", f"0-{n - 1}"), ("core_siblings_list", f"0-{n - 1}"),
                                ("package_cpus_list", f"0-{n - 1}"), ("thread_siblings_list", str(i))):
                (d / "topology" / name).write_text(value + "\n")
        (stage / "features.json").write_text(json.dumps(features) + "\n")
        commit(stage, view)
    return view, features


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def emulated_command(qemu: str, sysroot: Sysroot, view: Path, cpu: str, args: list[str]) -> list[str]:
    """The command line that runs the sysroot's python with ``args`` on ``cpu`` under qemu."""
    env = {"PYTHONPATH": SITE, "LD_LIBRARY_PATH": STANDINS, "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env_args = [a for k, v in env.items() for a in ("-E", f"{k}={v}")]
    python = str(sysroot.root / PYTHON.lstrip("/"))
    return [qemu, "-cpu", cpu, "-L", str(view), *env_args, python, "-s", *args]


def main() -> int:
    """``python -m hrvit_mobile.arm64.sysroot``: prepare the cached sysroot (downloads from Debian and PyPI)
    ahead of a run that must not reach the network, e.g. the emulated tests."""
    try:
        qemu_binary()
        sysroot = prepare_sysroot(progress=print)
    except HRViTMobileError as exc:
        print(f"hrvit-mobile: error: {exc}", file=sys.stderr)
        return 2
    m = sysroot.manifest
    print(f"{sysroot.path}: built in {m['build_seconds']:.0f} s, {m['size_bytes'] / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
