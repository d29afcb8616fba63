"""Each package's public API is exactly its sorted `__all__`, and every public name is documented."""

import importlib
import inspect
import types

import pytest

PACKAGES = ["af", "afcore", "afc", "afrt"]


@pytest.mark.parametrize("name", PACKAGES)
class TestExportedMembers:
    def test_all_is_sorted_and_resolves(self, name):
        package = importlib.import_module(name)
        assert list(package.__all__) == sorted(package.__all__)
        for member in package.__all__:
            assert getattr(package, member) is not None

    def test_every_public_name_is_in_all(self, name):
        package = importlib.import_module(name)
        public = {
            member
            for member, value in vars(package).items()
            if not member.startswith("_") and not isinstance(value, types.ModuleType)
        }
        assert public <= set(package.__all__) | {"annotations"}

    def test_every_exported_callable_has_a_docstring(self, name):
        package = importlib.import_module(name)
        for member in package.__all__:
            value = getattr(package, member)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert inspect.getdoc(value), f"{name}.{member} has no docstring"


def test_af_facade_points_at_the_real_functions():
    import af
    import afc
    import afrt

    assert af.compile is afc.compile_file
    assert af.validate is afc.validate
    assert af.load is afrt.load
    assert af.Swarm is afrt.Swarm


def test_the_command_uses_only_the_public_api_of_afc_and_afrt():
    """af/ is wiring: it imports afc and afrt names from their `__all__`, never from their modules."""
    import ast
    from pathlib import Path

    import afc
    import afrt

    exported = {"afc": set(afc.__all__), "afrt": set(afrt.__all__)}
    root = Path(__file__).resolve().parent.parent / "af"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in exported:
                package = node.module.split(".")[0]
                if node.module != package:
                    found.append(f"{path.name}: from {node.module} import ...")
                else:
                    found += [f"{path.name}: {package}.{a.name}" for a in node.names if a.name not in exported[package]]
    assert found == []
