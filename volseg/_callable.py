"""Modules that can be called: ``volseg.predict(...)`` runs :func:`volseg.api.predict`.

The pipeline stages live in modules named for them (``volseg/predict.py``), and the
notebook API wants functions of the same names on the package. A module attribute and
a function cannot share a name (importing the module rebinds the package attribute), so
each stage module is made callable instead: it keeps every attribute it had, and
calling it calls the API function of the same name, whose signature it reports.
"""

from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call is :mod:`volseg.api`'s function ``__api_name__``."""

    def _target(self):
        from . import api

        return getattr(api, self.__api_name__)

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(self._target())


def make_callable(module_name: str, api_name: str) -> None:
    """Make the (already imported) module ``module_name`` call ``volseg.api.<api_name>``."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__api_name__ = api_name
