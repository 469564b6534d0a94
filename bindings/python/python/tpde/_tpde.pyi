"""Type stubs of the Rust extension module ``tpde._tpde``."""

import os
from typing import List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, os.PathLike[str]]

__version__: str

class TpdeError(Exception):
    """Raised for every tpde failure, with a message naming the problem."""

def encode(
    data: bytes,
    reference: Optional[bytes] = None,
    *,
    kind: str = "auto",
    level: int = 3,
    chunk_kib: int = 4096,
    max_abs_error: Optional[float] = None,
    max_rel_error: Optional[float] = None,
) -> bytes:
    """Encodes a checkpoint file's bytes against ``reference`` (a keyframe
    without); ``kind`` is "auto", "safetensors", "torch" or "bytes"."""

def decode(
    data: bytes, reference: Optional[bytes] = None, *, max_output: Optional[int] = None
) -> bytes:
    """Decodes a ``.tpde`` container, every checksum verified."""

def encode_file(
    path: _Path, out: _Path, reference: Optional[_Path] = None, *, kind: str = "auto"
) -> Tuple[int, int]:
    """Encodes the file ``path`` into ``out``; returns (original, stored) bytes."""

def decode_file(
    path: _Path, out: _Path, reference: Optional[_Path] = None, *, max_output: Optional[int] = None
) -> int:
    """Decodes the ``.tpde`` file ``path`` into ``out``; returns its length."""

def safetensors_index(
    buf: npt.NDArray[np.uint8],
) -> Tuple[List[Tuple[str, str, List[int], int, int]], Optional[str]]:
    """The tensors (name, dtype, shape, begin, end) of a safetensors buffer,
    and its metadata as JSON."""

def step_from_name(name: str) -> Optional[int]:
    """The step number in a checkpoint's name (``checkpoint-500``: 500)."""

class Store:
    def __init__(
        self,
        location: str,
        *,
        keyframe_every: Optional[int] = None,
        create: bool = True,
        create_parents: bool = False,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    def steps(self) -> List[int]: ...
    def manifest_json(self) -> str: ...
    def add_path(
        self,
        path: _Path,
        step: int,
        *,
        max_abs_error: Optional[float] = None,
        max_rel_error: Optional[float] = None,
    ) -> None: ...
    def add_tensors(
        self,
        step: int,
        name: str,
        tensors: List[Tuple[str, str, List[int], npt.NDArray[np.uint8]]],
        extra: List[Tuple[str, bytes]],
        *,
        max_abs_error: Optional[float] = None,
        max_rel_error: Optional[float] = None,
    ) -> None: ...
    def restore(
        self, step: int
    ) -> Tuple[str, str, List[Tuple[str, npt.NDArray[np.uint8]]], List[str]]: ...
    def get(self, step: int, out: _Path) -> None: ...
    def verify(self) -> Tuple[int, int, int, List[str], int]: ...
    def remove(self, step: int) -> List[int]: ...
    def prune(self, keep_last: int = 0, keep_every: Optional[int] = None) -> List[int]: ...

def store_diff(location: str, a: int, b: int, sort: str = "rel") -> str: ...
def store_report(
    location: str,
    html: Optional[_Path] = None,
    csv: Optional[_Path] = None,
    json: Optional[_Path] = None,
    overwrite: bool = False,
) -> str: ...
_ReadStats = Tuple[int, int, int, int, int]

def store_open_step(
    store: Store, step: int, file: Optional[str] = None
) -> Tuple[str, str, List[Tuple[str, str, List[int]]], Optional[str], _ReadStats]: ...
def store_tensor(
    store: Store, step: int, file: str, object: str, name: str
) -> Tuple[npt.NDArray[np.uint8], _ReadStats]: ...
def store_read_file(store: Store, step: int, path: str) -> Tuple[bytes, _ReadStats]: ...
def store_plan_shared(store: Store, step: int) -> str: ...
def store_code_shared(
    store: Store,
    plan: str,
    path: str,
    data: bytes,
    kept: Optional[bytes] = None,
    *,
    max_abs_error: Optional[float] = None,
    max_rel_error: Optional[float] = None,
) -> str: ...
def store_commit_shared(
    store: Store, plan: str, name: str, records: List[str], wait_s: float
) -> str: ...
def store_read_ranges(
    store: Store, step: int, path: str, ranges: List[Tuple[int, int]]
) -> Tuple[List[bytes], _ReadStats]: ...
