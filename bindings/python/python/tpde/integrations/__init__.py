"""Hooks that put a training framework's checkpoints into a :class:`tpde.Store`.

Each integration lives in its own module and imports its framework only when
that module is imported, so ``import tpde`` never needs either of them:

- :mod:`tpde.integrations.transformers`: ``TpdeCallback``, a Hugging Face
  ``TrainerCallback`` that adds every ``checkpoint-N/`` folder the ``Trainer``
  writes to a store (optionally deleting the folder once the stored copy is
  checked byte for byte), and ``restore_checkpoint`` to write one back for
  ``trainer.train(resume_from_checkpoint=...)``.
- :mod:`tpde.integrations.lightning`: ``TpdeCheckpointIO``, a PyTorch
  Lightning ``CheckpointIO`` plugin that saves each checkpoint into a store
  and leaves a small JSON pointer file where Lightning expects the ``.ckpt``.

See docs/PYTHON.md for complete examples and caveats.
"""
