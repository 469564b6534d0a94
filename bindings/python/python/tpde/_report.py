"""``Store.diff`` and ``tpde.report``: what changed between steps of a store,
tensor by tensor and over the whole run (computed by the Rust core)."""

from __future__ import annotations

import json as _json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from ._api import _flag, _path, tpde_errors
from ._tpde import TpdeError, store_diff, store_report

if TYPE_CHECKING:  # pragma: no cover
    from ._store import Store

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of two steps (see ``tpde store diff``).

    ``kind`` is ``"compared"``, ``"added"``, ``"removed"`` or
    ``"changed-layout"``; only compared tensors have numbers.
    ``changed_fraction`` is the fraction of elements whose bits changed,
    ``max_abs`` and ``rms`` the largest and RMS |b - a|, ``rel`` the relative
    change ||b - a|| / ||a|| (float dtypes only), all computed in float64.
    ``changed_from_store`` says the count came from the store's record of
    the later step (stored as a delta of the earlier one), not from values.
    """

    file: str
    name: str
    kind: str
    dtype: str
    shape: Tuple[int, ...]
    before: Optional[Tuple[str, Tuple[int, ...]]]
    elements: int
    changed: int
    changed_fraction: Optional[float]
    changed_from_store: bool
    max_abs: Optional[float]
    rms: Optional[float]
    rel: Optional[float]
    nonfinite: int

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "TensorDiff":
        before = d.get("before")
        return cls(
            file=d["file"], name=d["name"], kind=d["kind"], dtype=d["dtype"],
            shape=tuple(d["shape"]),
            before=(before[0], tuple(before[1])) if before else None,
            elements=d["elements"], changed=d["changed"],
            changed_fraction=d["changed_fraction"],
            changed_from_store=d["changed_from_store"], max_abs=d["max_abs"], rms=d["rms"],
            rel=d["rel"], nonfinite=d["nonfinite"],
        )


_SORTS = ("rel", "changed", "name")


def diff(store: "Store", a: int, b: int, sort: str = "rel") -> List[TensorDiff]:
    """The tensors of steps ``a`` and ``b`` compared (``Store.diff``)."""
    if sort not in _SORTS:
        raise TpdeError(f"sort must be one of {', '.join(_SORTS)}, not {sort!r}")
    d = _json.loads(store_diff(store.path, a, b, sort))
    return [TensorDiff._from(t) for t in d["tensors"]]


@tpde_errors
def report(store: Union["Store", PathLike], out: Optional[PathLike] = None, *,
           csv: Optional[PathLike] = None, json: Optional[PathLike] = None,
           png: Optional[PathLike] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Writes the report of a store (a :class:`tpde.Store` or its path): the
    self-contained HTML page of ``tpde store report`` to ``out``, the same
    data as CSV to ``csv`` and as JSON to ``json``, and with
    ``png=`` (needs matplotlib) the heat map of the changed fraction and
    the relative change as a PNG. Returns the report as a dict."""
    from ._store import Store

    location = store.path if isinstance(store, Store) else os.fspath(_path("store", store))
    overwrite = _flag("overwrite", overwrite)
    paths = [None if p is None else _path(name, p)
             for name, p in (("out", out), ("csv", csv), ("json", json))]
    if all(p is None for p in paths) and png is None:
        raise TpdeError("say where to write the report: out, csv, json and/or png")
    data: Dict[str, Any] = _json.loads(store_report(location, *paths, overwrite=overwrite))
    if png is not None:
        _png(data, _path("png", png), overwrite)
    return data


def _png(data: Dict[str, Any], out: str, overwrite: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError as e:
        raise TpdeError("png= needs matplotlib (pip install matplotlib)") from e
    if os.path.exists(out) and not overwrite:
        raise TpdeError(f"{out} exists already; pass overwrite=True to replace it")
    groups = data["groups"]
    pairs = data["pairs"]
    import numpy as np

    changed = np.full((len(groups), len(pairs)), np.nan)
    rel = np.full((len(groups), len(pairs)), np.nan)
    for j, p in enumerate(pairs):
        for c in p["cells"]:
            i = groups.index(c["group"])
            if c["changed_fraction"] is not None:
                changed[i, j] = c["changed_fraction"]
            if c["rel_change"] is not None:
                rel[i, j] = c["rel_change"]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2 + 0.5 * len(pairs)) * 2,
                                            max(3, 0.3 * len(groups) + 1.5)))
    positive = rel[rel > 0]
    norms = [None, LogNorm(positive.min(), positive.max()) if positive.size else None]
    for ax, m, title, norm in zip(axes, (changed, rel),
                                  ("changed fraction", "relative change"), norms):
        im = ax.imshow(m, aspect="auto", cmap="viridis", norm=norm,
                       vmin=None if norm else 0, vmax=None if norm else 1)
        ax.set_title(title)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_xticks(range(len(pairs)), [str(p["b"]) for p in pairs], fontsize=7)
        ax.set_xlabel("step")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
