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
