"""The few calls of libbpf (Debian's libbpf1) the fast path needs, through ctypes.

Objects are opened from the ELF object that clang built, loaded (libbpf does the
relocations, CO-RE and the verifier's log), and their programs attached as tcx
links (Linux 6.6+): a link belongs to its file descriptor, so it goes when the
process goes, also on SIGKILL - nothing is pinned, nothing stale stays attached.
(On older kernels the loader adds tc filters instead, through pyroute2.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

log = logging.getLogger(__name__)

BPF_TCX_INGRESS = 46  # enum bpf_attach_type, Linux 6.6
BPF_TCX_EGRESS = 47
BPF_ANY = 0


class BpfError(OSError):
    """A libbpf call failed; errno and a message saying which."""


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib = None
_libc = None
_messages: list[str] = []  # libbpf's messages of the current call, for the error that follows


@_PRINT_FN
def _on_print(level, fmt, args):
    buffer = ctypes.create_string_buffer(1 << 20)  # the verifier log comes as one message
    _libc.vsnprintf(buffer, len(buffer), fmt, ctypes.c_void_p(args))
    text = buffer.value.decode(errors="replace").rstrip()
    if text:
        _messages.append(text)  # kept for the error that may follow (the verifier's log comes as one)
        if level == 0:  # LIBBPF_WARN; its INFO and DEBUG messages are many lines per load
            log.debug("%s", text)
    return 0


def library():
    """libbpf.so.1, with the signatures used here; BpfError if it is not installed."""
    global _lib, _libc
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf")
    if name is None:
        raise BpfError(errno.ENOENT, "libbpf is not installed (Debian: libbpf1)")
    lib = ctypes.CDLL(name, use_errno=True)
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    vp, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    for fn, restype, argtypes in (
        ("libbpf_set_print", vp, [_PRINT_FN]),
        ("bpf_object__open_mem", vp, [ctypes.c_char_p, ctypes.c_size_t, vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, ctypes.c_char_p]),
        ("bpf_program__fd", i, [vp]),
        ("bpf_object__find_map_fd_by_name", i, [vp, ctypes.c_char_p]),
        ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
        ("bpf_map_lookup_elem", i, [i, vp, vp]),
        ("bpf_map_delete_elem", i, [i, vp]),
        ("bpf_map_get_next_key", i, [i, vp, vp]),
        ("bpf_link_create", i, [i, i, u32, vp]),
        ("bpf_prog_test_run_opts", i, [i, ctypes.POINTER(_TestRunOpts)]),
        ("libbpf_num_possible_cpus", i, []),
        ("bpf_obj_get_info_by_fd", i, [i, vp, ctypes.POINTER(u32)]),
    ):
        func = getattr(lib, fn)
        func.restype, func.argtypes = restype, argtypes
    lib.libbpf_set_print(_on_print)
    _lib = lib
    return lib


def _check(result: int, what: str) -> int:
    """libbpf returns -errno (and sets errno); raise with libbpf's last words."""
    if result < 0:
        code = -result if result != -1 else (ctypes.get_errno() or errno.EINVAL)
        detail = _last_words()
        raise BpfError(code, f"{what}: {os.strerror(code)}" + (f" ({detail})" if detail else ""))
    return result


def _last_words() -> str:
    """The libbpf messages that explain a failure (the verifier's last lines, if any)."""
    lines = [line for text in _messages for line in text.splitlines()
             if line.strip() and not line.startswith(("processed ", "-- END"))]
    _messages.clear()
    return "; ".join(lines[-3:])


class BpfObject:
    """One loaded ELF object: its programs and maps by name; close() unloads it."""

    def __init__(self, elf: bytes):
        lib = library()
        _messages.clear()
        self._elf = elf  # libbpf reads from it while opening
        obj = lib.bpf_object__open_mem(elf, len(elf), None)
        if not obj:
            _check(-(ctypes.get_errno() or errno.EINVAL), "opening the eBPF object")
        self._obj = obj
        try:
            _check(lib.bpf_object__load(obj), "loading the eBPF programs")
        except BpfError:
            self.close()
            raise
        _messages.clear()

    def program_fd(self, name: str) -> int:
        prog = library().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(errno.ENOENT, f"no eBPF program {name}")
        return _check(library().bpf_program__fd(prog), f"program {name}")

    def map_fd(self, name: str) -> int:
        return _check(library().bpf_object__find_map_fd_by_name(self._obj, name.encode()), f"map {name}")

    def close(self) -> None:
        if self._obj:
            library().bpf_object__close(self._obj)
            self._obj = None


def map_update(fd: int, key: bytes, value: bytes) -> None:
    _check(library().bpf_map_update_elem(fd, key, value, BPF_ANY), "updating a map")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    value = ctypes.create_string_buffer(value_size)
    if library().bpf_map_lookup_elem(fd, key, value) < 0:
        if ctypes.get_errno() == errno.ENOENT:
            return None
        _check(-ctypes.get_errno(), "reading a map")
    return value.raw


def map_delete(fd: int, key: bytes) -> None:
    if library().bpf_map_delete_elem(fd, key) < 0 and ctypes.get_errno() != errno.ENOENT:
        _check(-ctypes.get_errno(), "deleting from a map")


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys, key = [], None
    following = ctypes.create_string_buffer(key_size)
    while library().bpf_map_get_next_key(fd, key, following) == 0:
        key = following.raw
        keys.append(key)
    return keys


def possible_cpus() -> int:
    return _check(library().libbpf_num_possible_cpus(), "counting CPUs")


def attach_tcx(prog_fd: int, ifindex: int, attach_type: int, what: str) -> int:
    """A tcx link of the program on the device; closing the returned fd detaches it."""
    _messages.clear()
    return _check(library().bpf_link_create(prog_fd, ifindex, attach_type, None), what)


def object_id(fd: int) -> int:
    """The kernel's id of a link or program (as `bpftool link|prog show` lists it)."""
    info = ctypes.create_string_buffer(256)  # struct bpf_link_info / bpf_prog_info: type, id, ...
    size = ctypes.c_uint32(len(info))
    _check(library().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "reading an object's id")
    return int.from_bytes(info.raw[4:8], "little")


def test_run(prog_fd: int, data: bytes, ctx: bytes | None = None) -> tuple[int, bytes]:
    """BPF_PROG_TEST_RUN: the program's return value and the packet as it left it."""
    out = ctypes.create_string_buffer(len(data) + 256)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(out, ctypes.c_void_p)
    opts.data_size_out = len(out)
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    opts.repeat = 1
    _check(library().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, out.raw[: opts.data_size_out]
