"""Compile the fast path's restricted C with clang, once per source and compiler.

The object is cached under a name made of the hash of the source (with the
headers beside it) and of clang's version, in the first usable of: $CACHE_DIRECTORY (systemd's
CacheDirectory=), $XDG_CACHE_HOME/sixbed4, /var/cache/sixbed4 (root),
~/.cache/sixbed4.  Whatever is in the cache gets loaded into the kernel, so a
cache directory or object that someone else could have written is not used
(owned by us, not writable by group or others); then it is built anew into a
private temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from pathlib import Path

ROUTER = Path(__file__).with_name("router.bpf.c")
PEER = Path(__file__).with_name("peer.bpf.c")


class BuildError(RuntimeError):
    """clang is missing or failed; str() says which."""


def clang() -> str:
    for name in ("clang", "clang-16", "clang-15", "clang-14"):
        found = shutil.which(name)
        if found:
            return found
    raise BuildError("clang is not installed (Debian: clang, libbpf-dev)")


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{compiler} --version: {exc}") from None


def _private(path: Path) -> bool:
    """Ours and not writable by anyone else."""
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("CACHE_DIRECTORY"):
        dirs.append(Path(os.environ["CACHE_DIRECTORY"].split(":")[0]))
    if os.environ.get("XDG_CACHE_HOME"):
        dirs.append(Path(os.environ["XDG_CACHE_HOME"]) / "sixbed4")
    if os.geteuid() == 0:
        dirs.append(Path("/var/cache/sixbed4"))
    dirs.append(Path.home() / ".cache" / "sixbed4")
    return dirs


def _usable_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return _private(path) and os.access(path, os.W_OK)


def compile_object(source: Path, output: Path, compiler: str, defines: tuple[str, ...] = ()) -> None:
    include = f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or ''}".rstrip("/")
    cmd = [compiler, "-O2", "-g", "-target", "bpf", "-Wall", "-Wno-address-of-packed-member",
           f"-I{include}", *(f"-D{name}" for name in defines), "-c", str(source), "-o", str(output)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{compiler}: {exc}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        hint = " (libbpf-dev missing?)" if "bpf/bpf_helpers.h" in result.stderr else ""
        raise BuildError(f"compiling {source.name} failed{hint}: {last}")


def _text(source: Path) -> bytes:
    """The source and the headers beside it that it may include."""
    headers = sorted(source.parent.glob("*.bpf.h"))
    return b"".join(path.read_bytes() for path in [source, *headers])


def build(source: Path, defines: tuple[str, ...] = ()) -> bytes:
    """The compiled object for `source` (an ELF file's bytes), built now if the cache has none.

    `defines`: macros for the build (COMPAT_5_10: the programs for kernels before 6.6).
    """
    compiler = clang()
    key = _text(source) + _compiler_version(compiler).encode() + " ".join(defines).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    name = f"{source.name.removesuffix('.c')}-{digest}.o"
    for directory in cache_dirs():
        cached = directory / name
        if cached.exists() and _private(directory) and _private(cached):
            return cached.read_bytes()
        if _usable_dir(directory):
            fd, temporary = tempfile.mkstemp(prefix=".build-", suffix=".o", dir=directory)
            os.close(fd)
            try:
                compile_object(source, Path(temporary), compiler, defines)
                os.chmod(temporary, 0o600)
                os.replace(temporary, cached)  # atomic: a concurrent start sees all or nothing
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            return cached.read_bytes()
    with tempfile.TemporaryDirectory(prefix="sixbed4-bpf-") as private:
        compile_object(source, Path(private) / name, compiler, defines)
        return (Path(private) / name).read_bytes()
