"""The import contract: a module of grantkeeper imports only from its own layer or lower ones.

Layers, lowest first (docs/design.md, "Architecture"):

0. foundation: ``_exceptions``, ``_secrets``, ``_clock``, ``_failpoints``, ``_fsutil``
1. ``model``
2. ``protocol``, ``diagnosis``
3. ``engine``, ``notify``
4. adapters: ``stores``, ``tokens``, ``keys``, ``profiles``, ``redact``, ``bundle``, ``crypto``, ``keyring``
5. application: ``cli``, ``serve``, ``consent``, ``integrations``, ``testing``, ``admin``, ``keepers`` (the
   composition module) and the package root ``grantkeeper/__init__.py``

Every ``import`` and ``from ... import`` counts, wherever it stands: at the top, inside a function (a lazy import
is still a dependency), or under ``if TYPE_CHECKING`` (a type names the layer it comes from). The check reads the
source with `ast`, so it needs nothing installed and cannot be fooled by import order.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import grantkeeper

PACKAGE = "grantkeeper"

#: Layer of each top-level module or subpackage of grantkeeper (its first name after ``grantkeeper.``).
LAYERS: dict[str, int] = {
    **dict.fromkeys(["_exceptions", "_secrets", "_clock", "_failpoints", "_fsutil"], 0),
    "model": 1,
    **dict.fromkeys(["protocol", "diagnosis"], 2),
    **dict.fromkeys(["engine", "notify"], 3),
    **dict.fromkeys(["stores", "tokens", "keys", "profiles", "redact", "bundle"], 4),
    **dict.fromkeys(["cli", "serve", "consent", "integrations", "testing", "admin", "keepers", "__main__"], 5),
}
ROOT_LAYER = 5  # ``grantkeeper/__init__.py``: the public face re-exports from every layer
LAYER_NAMES = {0: "foundation", 1: "model", 2: "core", 3: "engine", 4: "adapters", 5: "application"}


@dataclass(frozen=True, slots=True)
class Violation:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        low, high = layer_of(self.importer), layer_of(self.imported)
        return (
            f"{self.importer} (layer {low}, {LAYER_NAMES[low]}) imports {self.imported} (layer {high}, "
            f"{LAYER_NAMES[high]}) at line {self.line}: a module may import only from its own layer or lower ones"
        )


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_LAYER
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add {parts[1]!r} to LAYERS in tests/test_layers.py")
    return LAYERS[parts[1]]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, root: Path) -> list[str]:
    """The grantkeeper modules `node` imports; ``from pkg import name`` names the submodule if `name` is one."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        as_path = root.parent.joinpath(*candidate.split("."))
        found.append(candidate if as_path.with_suffix(".py").is_file() or as_path.is_dir() else base)
    return found


def check_tree(root: Path) -> list[Violation]:
    """Every import in the package at `root` (a folder named like the package) that goes up a layer."""
    violations: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for imported in _imported(node, module, path.name == "__init__.py", root):
                if imported.split(".")[0] != root.name:
                    continue  # the standard library and third parties are not layered here
                found = Violation(module, imported, node.lineno)
                if layer_of(imported) > layer_of(module) and found not in violations:
                    violations.append(found)  # once per line, however many names it imports
    return violations


def test_every_import_goes_down_the_layers() -> None:
    violations = check_tree(Path(grantkeeper.__file__).parent)
    assert [str(v) for v in violations] == []


def test_every_module_has_a_layer() -> None:
    root = Path(grantkeeper.__file__).parent
    for path in root.rglob("*.py"):
        layer_of(_module_name(path, root))  # raises for a module in no layer


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


def test_the_check_catches_planted_violations(tmp_path: Path) -> None:
    """A model module that reaches up in each way an import can be written: all four are found, with both
    modules, both layers and the line; the allowed imports beside them are not."""
    root = _plant(tmp_path, {
        "_clock.py": "",
        "stores/sql.py": "",
        "engine/keeper.py": "",
        "model/bad.py": """\
            from typing import TYPE_CHECKING

            import httpx
            from grantkeeper import _clock
            from grantkeeper.stores import sql
            from ..model import bad

            if TYPE_CHECKING:
                from grantkeeper.engine.keeper import Keeper


            def late() -> None:
                import grantkeeper.cli.main
                from .. import engine
            """,
    })  # fmt: skip
    found = sorted((v.imported, v.line) for v in check_tree(root) if v.importer == "grantkeeper.model.bad")
    assert found == [
        ("grantkeeper.cli.main", 13), ("grantkeeper.engine", 14), ("grantkeeper.engine.keeper", 9),
        ("grantkeeper.stores.sql", 5),
    ]  # fmt: skip
    message = str(next(v for v in check_tree(root) if v.imported == "grantkeeper.stores.sql"))
    assert message.startswith("grantkeeper.model.bad (layer 1, model) imports grantkeeper.stores.sql (layer 4,")


def test_the_check_accepts_a_clean_tree(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "_secrets.py": "",
        "model/grant.py": "from grantkeeper._secrets import x\n",
        "engine/keeper.py": "from grantkeeper.model.grant import Grant\nfrom grantkeeper.notify import y\n",
        "notify/__init__.py": "from grantkeeper.engine import keeper\n",
        "cli/main.py": "import grantkeeper\nfrom grantkeeper.engine.keeper import Keeper\n",
    })  # fmt: skip
    assert check_tree(root) == []


def test_a_module_in_no_layer_is_an_error(tmp_path: Path) -> None:
    root = _plant(tmp_path, {"mystery.py": "", "model/a.py": "from grantkeeper import mystery\n"})
    with pytest.raises(AssertionError, match=r"grantkeeper\.mystery is in no layer"):
        check_tree(root)
