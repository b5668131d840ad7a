"""Digests that identify what a run is made of: tensors (a data set, a subset, initial weights) and functions
(a custom objective, an ``eval_fn``), so that a changed piece gives a run another key and never reuses a stale one.
"""
from __future__ import annotations

import hashlib
import types

import torch


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the tensors' shapes, dtypes and bytes: what identifies a data set, a
    subset or a validation split in a run's key."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


_PLAIN = (str, int, float, bool, complex, bytes, type(None))


def _value(v, depth: int) -> str:
    """A value a function reads (a default, a closure cell, a constant) as text; tensors by their bytes."""
    if isinstance(v, _PLAIN):
        return repr(v)
    if isinstance(v, (tuple, frozenset)) and depth < 3:   # not lists or dicts: a function may fill them as it runs
        return f"{type(v).__name__}({', '.join(_value(x, depth + 1) for x in v)})"
    if isinstance(v, torch.Tensor):
        return f"tensor:{tensor_digest(v)}"
    if isinstance(v, types.CodeType):
        return _code(v, depth + 1)
    if isinstance(v, types.FunctionType) and depth < 3:
        return function_digest(v, depth + 1)
    # a module, a model, a data set: what it is, not its contents (their own digests are in the key already)
    return f"<{type(v).__module__}.{type(v).__qualname__}>"


def _code(code: types.CodeType, depth: int) -> str:
    consts = ", ".join(_value(c, depth) for c in code.co_consts)
    return f"{code.co_code.hex()}|{consts}|{code.co_names}"


def function_digest(fn, depth: int = 0) -> str:
    """A Python function's qualified name and a digest of what it computes: its bytecode, constants, names read,
    default arguments, and the plain values (numbers, strings, tuples, tensors) its closure holds and the global
    names it reads are bound to. Lists, dicts and other objects count by their type only.

    Two lambdas in one notebook get different digests; a function edited to compute something else gets another
    one. Bytecode differs between Python versions, so a run keyed by a function is retrained under another one.
    A callable that is not a plain function is named by its class.
    """
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    fn = getattr(fn, "__func__", fn)   # a bound method: its function
    if not isinstance(fn, types.FunctionType):
        return name
    cells = tuple(c.cell_contents for c in (fn.__closure__ or ()) if _filled(c))
    read = tuple((n, fn.__globals__[n]) for n in fn.__code__.co_names
                 if isinstance(fn.__globals__.get(n), _PLAIN[:-1] + (tuple, torch.Tensor)))   # eps = 0.1 in a notebook
    text = "|".join([_code(fn.__code__, depth), _value(fn.__defaults__, depth), _value(fn.__kwdefaults__, depth),
                     _value(cells, depth), _value(read, depth)])
    return f"{name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:   # a cell not yet assigned
        return False
    return True
