"""tpde: lossless delta compression of neural-network checkpoints.

>>> import tpde
>>> store = tpde.Store("ckpts")                       # opens or creates
>>> store.save(100, {"model": model.state_dict(),     # doctest: +SKIP
...                  "optimizer": opt.state_dict()})
>>> state = store.load(100)                           # doctest: +SKIP

Every failure raises :class:`tpde.TpdeError` with a message naming the problem.
"""

from ._api import decode, decode_file, encode, encode_file
from ._report import TensorDiff, report
from ._store import Store, VerifyReport
from ._tpde import TpdeError, __version__

__all__ = [
    "Store",
    "TensorDiff",
    "TpdeError",
    "VerifyReport",
    "__version__",
    "decode",
    "decode_file",
    "encode",
    "encode_file",
    "report",
]
