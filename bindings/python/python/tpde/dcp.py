"""``tpde.dcp``: torch.distributed.checkpoint (DCP) straight into a tpde store.

::

    import torch.distributed.checkpoint as dcp
    import tpde.dcp

    dcp.save(state_dict, storage_writer=tpde.dcp.StoreWriter("s3://b/run", step=500))
    fut = dcp.async_save(state_dict, storage_writer=tpde.dcp.StoreWriter("/ckpt/run", step=500))
    dcp.load(state_dict, storage_reader=tpde.dcp.StoreReader("s3://b/run", step=500))

Every rank lays out its write items as DCP's ``FileSystemWriter`` would
(``__R_0.distcp``: each pickled value, then each tensor shard as a
``torch.save`` archive), in memory, and codes that file into the store
against the same rank's file of the previous stored step: the bytes it kept
from its last save (one step, at most ``KEEP_MAX`` bytes per file), else
decoded from the store. Its content object is put *pending* — durable, but
not part of any step. The coordinator then writes ``.metadata`` and commits
the step (``checkpoint-<step>``) under the store's lock, or compare-and-swap
on object storage. No full-size file is written anywhere, no rank reads
another's data, and a rank that fails or dies before the commit leaves no
step (its pending object is removed by a later write once it is an hour
old). The error reaches ``dcp.save``'s caller on every rank, as DCP's
``CheckpointException`` naming each rank's ``TpdeError``.

A stored step is an ordinary folder step: ``tpde store get STORE STEP -o
DIR`` writes a DCP folder that ``dcp.FileSystemReader(DIR)`` reads; keyframes,
``prune``, ``verify`` and ``ls`` treat it like any other. ``StoreReader``
serves the byte ranges DCP asks for (so loading reshards to any world size),
decoding only the shards they cover along the chain.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import threading
import uuid
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.futures import Future
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult

from . import _tpde
from ._api import U32_MAX, U64_MAX, _int
from ._tpde import TpdeError

try:  # the file layout DCP's own reader expects
    from torch.distributed.checkpoint.filesystem import _StorageInfo
except ImportError:  # pragma: no cover - very old torch
    raise ImportError("tpde.dcp needs torch.distributed.checkpoint with FileSystemWriter")

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION
except ImportError:  # pragma: no cover
    CURRENT_DCP_VERSION = None

__all__ = ["StoreWriter", "StoreReader", "KEEP_MAX"]

StoreLike = Union[str, "os.PathLike[str]", Any]

METADATA = ".metadata"
#: A rank keeps the bytes of each file it saved last, up to this size, so
#: that its next save needs no decode (as ``Store.keep_latest`` does).
KEEP_MAX = 1 << 30

# (store location, file path) -> (step, bytes) of the last save in this process.
_kept: Dict[Tuple[str, str], Tuple[int, bytes]] = {}
_kept_lock = threading.Lock()


def _location(store: StoreLike) -> str:
    if hasattr(store, "path") and hasattr(store, "_inner"):  # a tpde.Store
        return store.path
    if isinstance(store, (str, os.PathLike)):
        return os.fspath(store)
    raise TpdeError(f"store must be a path, an s3:// URL or a tpde.Store, not a "
                    f"{type(store).__name__}")


def _kept_bytes(location: str, path: str) -> Optional[bytes]:
    with _kept_lock:
        got = _kept.get((location, path))
    return got[1] if got else None


def _keep(location: str, path: str, step: int, data: bytes) -> None:
    with _kept_lock:
        if len(data) <= KEEP_MAX:
            _kept[(location, path)] = (step, data)
        else:
            _kept.pop((location, path), None)


@dataclasses.dataclass(frozen=True)
class _RankPlan:
    """What the coordinator's global plan gives each rank."""

    prefix: str
    plan: str  # the store's SharedPlan, JSON


@dataclasses.dataclass(frozen=True)
class _ItemResult:
    """A write item's place in its rank's file, and (on one item per file)
    the file's record for the commit."""

    info: Any  # _StorageInfo
    record: Optional[str]


class StoreWriter(StorageWriter):
    """A DCP ``StorageWriter`` that saves step ``step`` into the tpde store
    at ``store`` (a folder, ``s3://bucket/prefix`` or a ``tpde.Store``;
    made, with ``keyframe_every``, when there is none). ``step`` may instead
    come from ``dcp.save(..., checkpoint_id=STEP)``. With ``max_abs_error``
    or ``max_rel_error`` the float shards are stored lossy within that bound
    (as ``Store.save``). The coordinator waits up to ``commit_wait`` seconds
    for another writer holding the store.

    A new ``StoreWriter`` is made for each save; it may be pickled (DCP's
    process-based ``async_save``)."""

    def __init__(self, store: StoreLike, step: Optional[int] = None, *,
                 keyframe_every: Optional[int] = None,
                 max_abs_error: Optional[float] = None,
                 max_rel_error: Optional[float] = None,
                 commit_wait: float = 600.0) -> None:
        super().__init__()
        self.location = _location(store)
        self.step = None if step is None else _int("step", step, 0, U64_MAX)
        self.keyframe_every = (None if keyframe_every is None
                               else _int("keyframe_every", keyframe_every, 1, U32_MAX))
        if max_abs_error is not None and max_rel_error is not None:
            raise TpdeError("give max_abs_error or max_rel_error, not both")
        self.max_abs_error = max_abs_error
        self.max_rel_error = max_rel_error
        self.commit_wait = float(commit_wait)
        self.save_id = str(uuid.uuid4())
        self.is_coordinator = False
        self._plan: Optional[str] = None
        self._inner: Any = None

    # Pickled for a process-based async_save: the store is opened again there.
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_inner"] = None
        return state

    def _store(self) -> Any:
        if self._inner is None:
            self._inner = _tpde.Store(self.location, keyframe_every=self.keyframe_every,
                                      create=True, create_parents=False)
        return self._inner

    def reset(self, checkpoint_id: Union[str, os.PathLike, int, None] = None) -> None:
        if checkpoint_id is not None:
            if isinstance(checkpoint_id, os.PathLike) or (
                    isinstance(checkpoint_id, str) and not checkpoint_id.isdigit()):
                raise TpdeError(f"a StoreWriter's checkpoint_id is the step number, not "
                                f"{checkpoint_id!r}")
            self.step = _int("step", int(checkpoint_id), 0, U64_MAX)
        self.save_id = str(uuid.uuid4())
        self._plan = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        if self.step is None:
            raise TpdeError("StoreWriter needs a step: StoreWriter(store, step=N) or "
                            "dcp.save(..., checkpoint_id=N)")
        self._store()  # a store that cannot be opened fails here, on every rank

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        self._plan = _tpde.store_plan_shared(self._store(), self.step)
        return [dataclasses.replace(p, storage_data=_RankPlan(f"__{i}_", self._plan))
                for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> "Future[List[WriteResult]]":
        rank_plan: _RankPlan = plan.storage_data
        if self._plan is None:
            self._plan = rank_plan.plan
        file_name = f"{rank_plan.prefix}0.distcp"
        buf = io.BytesIO()
        placed = []
        # As FileSystemWriter lays out one file per rank: values, then tensors.
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                data = planner.resolve_data(item)
                offset = buf.tell()
                buf.write(data.getbuffer())
                placed.append((item, offset, buf.tell() - offset))
        for item in plan.items:
            if item.type != WriteItemType.BYTE_IO:
                tensor = planner.resolve_data(item).detach().cpu()
                if tensor.untyped_storage().size() != tensor.nbytes:
                    tensor = tensor.clone()
                offset = buf.tell()
                torch.save(tensor, buf)
                placed.append((item, offset, buf.tell() - offset))
        results: List[WriteResult] = []
        if placed:
            data = buf.getvalue()
            del buf
            record = _tpde.store_code_shared(
                self._store(), rank_plan.plan, file_name, data,
                _kept_bytes(self.location, file_name),
                max_abs_error=self.max_abs_error, max_rel_error=self.max_rel_error)
            _keep(self.location, file_name, self.step, data)
            for k, (item, offset, length) in enumerate(placed):
                info = _StorageInfo(file_name, offset, length)
                results.append(WriteResult(index=item.index, size_in_bytes=length,
                                           storage_data=_ItemResult(info, record if k == 0
                                                                    else None)))
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        if self._plan is None:
            raise TpdeError("internal: finish before prepare_global_plan")
        storage_md = {}
        records = []
        for wr_list in results:
            for wr in wr_list:
                item: _ItemResult = wr.storage_data
                storage_md[wr.index] = item.info
                if item.record is not None:
                    records.append(item.record)
        if CURRENT_DCP_VERSION is not None:
            metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        meta = pickle.dumps(metadata)
        store = self._store()
        records.append(_tpde.store_code_shared(store, self._plan, METADATA, meta,
                                               _kept_bytes(self.location, METADATA)))
        _keep(self.location, METADATA, self.step, meta)
        _tpde.store_commit_shared(store, self._plan, f"checkpoint-{self.step}", records,
                                  self.commit_wait)

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=f"{self.location}#{self.step}", save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        return False  # never chosen by DCP on its own: pass storage_writer=


# What a stored .metadata may name: DCP's metadata types, torch sizes,
# dtypes and layouts, paths. Nothing else is unpickled (the store is
# hostile until checked).
_META_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "pathlib._local": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                               (torch.dtype, torch.layout,
                                                                torch.memory_format))):
            return getattr(torch, name)
        if name in _META_CLASSES.get(module, ()):
            return super().find_class(module, name)
        raise TpdeError(f"the step's .metadata names {module}.{name}, which a DCP "
                        f"checkpoint's metadata does not hold: refused")


def _load_metadata(data: bytes, what: str) -> Metadata:
    try:
        md = _MetadataUnpickler(io.BytesIO(data)).load()
    except TpdeError as e:
        raise TpdeError(f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle, whatever it raises
        raise TpdeError(f"{what}: not a DCP metadata file ({type(e).__name__}: {e})") from None
    if not isinstance(md, Metadata) or not isinstance(getattr(md, "storage_data", None), dict):
        raise TpdeError(f"{what}: not a DCP metadata file (it holds a {type(md).__name__})")
    for index, info in md.storage_data.items():
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str) or \
                not isinstance(info.offset, int) or not isinstance(info.length, int) or \
                info.offset < 0 or info.length < 0:
            raise TpdeError(f"{what}: damaged storage entry for {index}")
    return md


class StoreReader(StorageReader):
    """A DCP ``StorageReader`` of step ``step`` of the tpde store at
    ``store``, as :class:`StoreWriter` saved it. Checked when made, on every
    rank: a store that is not there, a missing step, or a step not saved
    through DCP raise ``TpdeError`` at once (no collective is entered).
    Loading reshards (another world size, another sharding) and decodes
    only the shards each rank's plan covers."""

    def __init__(self, store: StoreLike, step: int) -> None:
        super().__init__()
        self.location = _location(store)
        self.step = _int("step", step, 0, U64_MAX)
        self._inner = _tpde.Store(self.location, create=False)
        data, _stats = self._read_file(METADATA)
        self._metadata = _load_metadata(data, f"step {self.step}, {METADATA}")
        self.storage_data: Dict[Any, Any] = {}
        self.load_id = str(uuid.uuid4())
        self.stats: Dict[str, int] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_inner"] = None
        return state

    def _store(self) -> Any:
        if self._inner is None:
            self._inner = _tpde.Store(self.location, create=False)
        return self._inner

    def _read_file(self, path: str) -> Tuple[bytes, Any]:
        try:
            return _tpde.store_read_file(self._store(), self.step, path)
        except TpdeError as e:
            if f"has no file {path!r}" in str(e) or f'has no file "{path}"' in str(e):
                raise TpdeError(f"step {self.step} of {self.location} was not saved through "
                                f"DCP (it has no {path}): load it with tpde.Store") from None
            raise

    def reset(self, checkpoint_id: Union[str, os.PathLike, None] = None) -> None:
        if checkpoint_id is not None:
            raise TpdeError("a StoreReader reads the step it was made for; make another "
                            "for another step")
        self.storage_data = {}
        self.load_id = str(uuid.uuid4())

    def read_metadata(self) -> Metadata:
        md = self._metadata
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        per_file: Dict[str, list] = {}
        for req in plan.items:
            info = self.storage_data.get(req.storage_index)
            if info is None:
                raise TpdeError(f"step {self.step}: no stored data for {req.storage_index}")
            per_file.setdefault(info.relative_path, []).append((req, info))
        for path, reqs in per_file.items():
            ranges = sorted({(info.offset, info.length) for _, info in reqs})
            parts, stats = _tpde.store_read_ranges(self._store(), self.step, path, ranges)
            for k, v in _stats_dict(stats).items():
                self.stats[k] = self.stats.get(k, 0) + v
            blobs = dict(zip(ranges, parts))
            for req, info in reqs:
                blob = blobs[(info.offset, info.length)]
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(blob))
                    continue
                try:
                    tensor = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                except Exception as e:  # noqa: BLE001 - whatever a damaged archive raises
                    raise TpdeError(f"step {self.step}, {path}: the shard of "
                                    f"{req.storage_index.fqn} at {info.offset} is not a tensor "
                                    f"archive: {e}") from None
                if not isinstance(tensor, torch.Tensor):
                    raise TpdeError(f"step {self.step}, {path}: the shard of "
                                    f"{req.storage_index.fqn} holds a "
                                    f"{type(tensor).__name__}, not a tensor")
                for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                    tensor = tensor.narrow(dim, start, length)
                target = planner.resolve_tensor(req).detach()
                if target.size() != tensor.size():
                    raise TpdeError(f"step {self.step}: {req.storage_index.fqn} is stored as "
                                    f"{tuple(tensor.size())}, the state dict wants "
                                    f"{tuple(target.size())}")
                target.copy_(tensor)
                planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]) -> bool:
        return False  # never chosen by DCP on its own: pass storage_reader=


_STATS = ("objects", "index_bytes", "payload_bytes", "chunks", "tensors")


def _stats_dict(stats: Tuple[int, ...]) -> Dict[str, int]:
    return dict(zip(_STATS, stats))
