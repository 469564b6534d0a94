"""The file and bytes functions, with arguments checked so that every misuse
raises TpdeError (not a TypeError from deep inside)."""

from __future__ import annotations

import functools
import operator
import os
import sys
from typing import Any, Callable, Optional, Tuple, TypeVar, Union

import numpy as np

from . import _tpde
from ._tpde import TpdeError

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


def tpde_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turns the TypeError/ValueError/OverflowError of argument conversion
    into TpdeError, keeping the message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except TpdeError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise TpdeError(f"{fn.__name__}: {e}") from e

    return wrapper


U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
USIZE_MAX = 2 * sys.maxsize + 1
# zstd's levels (ZSTD_minCLevel() and ZSTD_maxCLevel(); 0 is its default, 3).
LEVEL_MIN, LEVEL_MAX = -131072, 22
# The library's chunk sizes: 64 bytes to 64 MiB.
CHUNK_KIB_MAX = 64 * 1024


def _describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _int(what: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int if it is one (or a numpy integer; not a bool) in
    [lo, hi]; else TpdeError naming ``what`` and the range."""
    n = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            n = operator.index(value)
        except TypeError:
            pass
    if n is None or not lo <= n <= hi:
        raise TpdeError(f"{what} must be an int between {lo} and {hi}, not {_describe(value)}")
    return n


def _flag(what: str, value: Any) -> bool:
    """``value`` if it is a bool (a truthy string is not one)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TpdeError(f"{what} must be True or False, not {_describe(value)}")


def _bytes(what: str, data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TpdeError(f"{what} must be bytes, not {type(data).__name__}")


def _path(what: str, p: Any) -> str:
    try:
        return os.fspath(p)
    except TypeError:
        raise TpdeError(f"{what} must be a path, not {type(p).__name__}") from None


@tpde_errors
def encode(data: bytes, reference: Optional[bytes] = None, *, kind: str = "auto",
           level: int = 3, chunk_kib: int = 4096, max_abs_error: Optional[float] = None,
           max_rel_error: Optional[float] = None) -> bytes:
    """Encodes the bytes of a checkpoint file against ``reference`` (a
    keyframe without) and returns the ``.tpde`` container. ``kind`` is
    "auto", "safetensors", "torch" or "bytes". A bound makes it lossy (pass
    the decoded previous file as ``reference``, so that errors do not add up)."""
    ref = None if reference is None else _bytes("reference", reference)
    level = _int("level", level, LEVEL_MIN, LEVEL_MAX)
    chunk_kib = _int("chunk_kib", chunk_kib, 1, CHUNK_KIB_MAX)
    return _tpde.encode(_bytes("data", data), ref, kind=kind, level=level, chunk_kib=chunk_kib,
                        max_abs_error=max_abs_error, max_rel_error=max_rel_error)


@tpde_errors
def decode(data: bytes, reference: Optional[bytes] = None, *,
           max_output: Optional[int] = None) -> bytes:
    """Decodes a ``.tpde`` container (with the reference it was encoded
    against, for a delta), every checksum verified. A container that claims
    to decode to more than ``max_output`` bytes raises TpdeError before
    anything is allocated: set it when the container comes from elsewhere."""
    ref = None if reference is None else _bytes("reference", reference)
    if max_output is not None:
        max_output = _int("max_output", max_output, 0, U64_MAX)
    return _tpde.decode(_bytes("data", data), ref, max_output=max_output)


@tpde_errors
def encode_file(path: PathLike, out: PathLike, reference: Optional[PathLike] = None, *,
                kind: str = "auto") -> Tuple[int, int]:
    """Encodes the file ``path`` into ``out`` (written atomically); returns
    (original bytes, stored bytes)."""
    ref = None if reference is None else _path("reference", reference)
    return _tpde.encode_file(_path("path", path), _path("out", out), ref, kind=kind)


@tpde_errors
def decode_file(path: PathLike, out: PathLike, reference: Optional[PathLike] = None, *,
                max_output: Optional[int] = None) -> int:
    """Decodes the ``.tpde`` file ``path`` into ``out`` (atomically, verified);
    returns its length. A file that claims more than ``max_output`` bytes, or
    more than the free space where ``out`` goes, raises TpdeError before
    anything is written."""
    ref = None if reference is None else _path("reference", reference)
    if max_output is not None:
        max_output = _int("max_output", max_output, 0, U64_MAX)
    return _tpde.decode_file(_path("path", path), _path("out", out), ref,
                             max_output=max_output)
