"""Load a user's search method: ``searcher: {name: custom, class: "module:Class", ...}``.

The module is looked up in the experiment's context directory first (``module.py`` or
``module/__init__.py``, dots for sub-packages), then on the Python path. The class must
subclass :class:`searcher.methods.SearchMethod`; it is built with the searcher config, whose
extra keys arrive as ``config.options``. Loading runs the module's code in the searcher
process, which holds the searcher's broker credentials: a shared searcher refuses custom
methods unless an admin allows them (``rung searcher --allow-custom-searchers``; ``rung
run`` and ``Client.local`` allow them, one user's own machine). The check is the service's
(:mod:`rung.searcher.service.creation`), before anything here runs; see docs/security.md.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from rung.searcher.config import CustomSearcher
from rung.searcher.errors import CustomSearcherError
from rung.searcher.methods.base import SearchMethod

__all__ = ["load_custom_method"]


def _module_file(context_dir: Path, module: str) -> Path | None:
    base = context_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_from_context(context_dir: Path, module: str, path: Path) -> ModuleType:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"_rung_custom_{digest}_{module.replace('.', '_')}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CustomSearcherError(f"searcher.class: cannot load {path} as a Python module")
    loaded = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(context_dir))
    try:
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() too
        sys.modules.pop(name, None)
        raise CustomSearcherError(
            f"searcher.class: importing {path} failed with {type(exc).__name__}: {exc}; "
            "fix the module so that it imports cleanly"
        ) from exc
    finally:
        sys.path.remove(str(context_dir))
    return loaded


def _import(module: str, context_dir: Path | None) -> ModuleType:
    path = _module_file(context_dir, module) if context_dir is not None else None
    if path is not None and context_dir is not None:
        return _import_from_context(context_dir, module, path)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        where = f" in the context directory {context_dir} or" if context_dir else ""
        raise CustomSearcherError(
            f"searcher.class: module {module!r} was not found{where} on the Python path; "
            f"put {module.replace('.', '/')}.py in the experiment's context directory"
        ) from exc
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() too
        raise CustomSearcherError(
            f"searcher.class: importing {module!r} failed with {type(exc).__name__}: {exc}; "
            "fix the module so that it imports cleanly"
        ) from exc


def load_custom_method(config: CustomSearcher, context_dir: Path | None) -> SearchMethod[Any]:
    module_name, _, class_name = config.class_.partition(":")
    module = _import(module_name, context_dir)
    cls: Any = getattr(module, class_name, None)
    if cls is None:
        raise CustomSearcherError(
            f"searcher.class: module {module_name!r} has no attribute {class_name!r}; "
            "check the spelling of the class name"
        )
    if not (isinstance(cls, type) and issubclass(cls, SearchMethod)):
        raise CustomSearcherError(
            f"searcher.class: {config.class_} is not a subclass of rung's SearchMethod; "
            "derive it from rung.searcher.methods.SearchMethod"
        )
    factory = cast("Callable[[CustomSearcher], SearchMethod[Any]]", cls)
    try:
        method = factory(config)
    except (Exception, SystemExit) as exc:
        raise CustomSearcherError(
            f"searcher.class: building {config.class_}(config) failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(method, "state"):
        raise CustomSearcherError(
            f"searcher.class: {config.class_} sets no self.state; keep all of its state in a "
            "pydantic model assigned to self.state so the experiment can snapshot it"
        )
    return method
