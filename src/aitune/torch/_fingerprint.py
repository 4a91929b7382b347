"""Stable digests of a module (and of files): its structure (classes, settings, forward code, parameter layout) and the
content of its weights. They key the persistent cache and tie a checkpoint to the model it was made from.

Both are hex sha256 strings that are identical across processes for the same model built the same way.

Known limits: the structure digest reads each class's `forward` bytecode and `extra_repr()`; behaviour that
lives elsewhere (a helper function the forward calls, a global flag) is not part of it. That is why a reused
engine is still checked against eager on the process's own samples before it serves a call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import threading
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: id(tensor) -> (a weak reference to it, its storage pointer, offset, version, shape, stride, dtype and device,
#: the digest of its bytes). An entry counts only while its reference still points at the same tensor: a key of
#: addresses alone would hand a freed tensor's digest to a new one allocated at the same place.
_TENSOR_DIGESTS: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], bytes]] = {}
_MAX_REMEMBERED = 100_000
_lock = threading.Lock()


def structure_digest(module: torch.nn.Module) -> str:
    """Digest of the module tree: paths, classes, their settings and forward code, parameter and buffer layout."""
    h = hashlib.sha256()
    for path, sub in module.named_modules(remove_duplicate=False):
        cls = type(sub)
        h.update(f"M|{path}|{cls.__module__}.{cls.__qualname__}|{_extra_repr(sub)}\n".encode())
        h.update(_code_digest(cls))
        for name, p in sub.named_parameters(recurse=False):
            h.update(f"P|{name}|{p.dtype}|{tuple(p.shape)}|{p.device.type}\n".encode())
        for name, b in sub.named_buffers(recurse=False):
            if b is not None:
                h.update(f"B|{name}|{b.dtype}|{tuple(b.shape)}|{b.device.type}\n".encode())
    return h.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """Digest of the bytes of every parameter and buffer, by name. Each tensor is hashed once per version."""
    h = hashlib.sha256()
    for name, t in _named_weights(module):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_digest(t))
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> bytes:
    """sha256 of the tensor's bytes, computed once per tensor and version (in-place writes bump the version)."""
    owner = t
    t = t.detach()
    state = (t.untyped_storage().data_ptr() if t.numel() else 0, t.storage_offset(), t._version, tuple(t.shape),
             t.stride(), t.dtype, str(t.device))
    with _lock:
        found = _TENSOR_DIGESTS.get(id(owner))
    if found is not None and found[0]() is owner and found[1] == state:
        return found[2]
    digest = _sha256_of_bytes(t)
    with _lock:
        if len(_TENSOR_DIGESTS) >= _MAX_REMEMBERED:
            for key in [k for k, v in _TENSOR_DIGESTS.items() if v[0]() is None]:
                del _TENSOR_DIGESTS[key]
        _TENSOR_DIGESTS[id(owner)] = (weakref.ref(owner), state, digest)
    return digest


def _sha256_of_bytes(t: torch.Tensor) -> bytes:
    """sha256 of the tensor's bytes, read in place on the CPU (through ctypes: a core install may lack numpy)."""
    if t.numel() == 0:
        return hashlib.sha256(b"").digest()
    data = t.contiguous().reshape(-1).view(torch.uint8).cpu()
    buffer = (ctypes.c_ubyte * data.numel()).from_address(data.data_ptr())
    return hashlib.sha256(buffer).digest()


def _named_weights(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = [(f"p:{n}", p) for n, p in module.named_parameters(remove_duplicate=False)]
    out += [(f"b:{n}", b) for n, b in module.named_buffers(remove_duplicate=False) if b is not None]
    return out


def _extra_repr(module: torch.nn.Module) -> str:
    try:
        return module.extra_repr()
    except Exception:  # a user extra_repr that fails: the forward code and parameters still key the structure
        return "?"


_CODE_DIGESTS: dict[type, bytes] = {}


def _code_digest(cls: type) -> bytes:
    found = _CODE_DIGESTS.get(cls)
    if found is None:
        h = hashlib.sha256()
        forward = getattr(cls, "forward", None)
        code = getattr(forward, "__code__", None)
        if isinstance(code, types.CodeType):
            _hash_code(h, code)
        else:
            h.update(repr(forward).encode())
        found = _CODE_DIGESTS[cls] = h.digest()
    return found


def _hash_code(h: Any, code: types.CodeType) -> None:
    # marshal.dumps is not used: its output depends on reference counts, so it differs between processes.
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_argcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(h, const)
        else:
            h.update(repr(const).encode())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_under(root: Path) -> Iterator[Path]:
    """Every regular file below `root`, at any depth."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def device_model(device: torch.device) -> str:
    """What the engines were built for: the GPU model and capability, or the CPU model and ISA level."""
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda|{props.name}|sm{props.major}{props.minor}|{props.total_memory // (1 << 30)}GiB"
    return f"{device.type}|{_cpu_model()}"


@functools.cache
def _cpu_model() -> str:
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an older torch without the query: the model name alone then keys the device
        capability = "?"
    return f"{name}|{platform.machine()}|{capability}"


_VERSION_PACKAGES = ("torch", "aitune", "triton", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                     "tensorrt", "tensorrt-rtx-cu13", "torch-tensorrt", "nvidia-modelopt", "numpy")
_VERSIONS: dict[str, str] = {}


def library_versions() -> dict[str, str]:
    """Versions of Python, CUDA and every library that can change an engine (those installed)."""
    if not _VERSIONS:
        import platform
        from importlib import metadata

        found = {"python": platform.python_version(), "torch_cuda": str(torch.version.cuda)}
        for name in _VERSION_PACKAGES:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        found["torch"] = torch.__version__
        _VERSIONS.update(found)
    return dict(_VERSIONS)


def weights_state(module: torch.nn.Module) -> tuple[tuple[Any, ...], int]:
    """(identity, storage, dtype, device and shape of every parameter and buffer), and the sum of their version
    counters: cheap enough to compare on a tuned call. Versions only grow, so a changed sum means some tensor was
    modified in place; changed identities mean weights were replaced, moved or cast."""
    ids: list[Any] = []
    versions = 0
    for t in live_weights(module):
        ids.append((id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape)))
        versions += t._version
    return tuple(ids), versions


def live_weights(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    for b in module.buffers():
        if b is not None:
            yield b
