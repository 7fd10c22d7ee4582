"""Training: what ``qlite train`` learns (see :mod:`qlite.train.trainer`).  ``qlite.train(...)`` calls
:func:`qlite.train.trainer.train`."""
import sys as _sys
import types as _types


class _TrainPackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .trainer import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _TrainPackage
