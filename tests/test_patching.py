"""hrvit_mobile.patching.patched: attributes swapped for a block and put back however it ends."""

from __future__ import annotations

import types

import pytest

from hrvit_mobile.patching import patched


class _Base:
    def greet(self) -> str:
        return "base"


class _Child(_Base):
    @staticmethod
    def tool() -> str:
        return "static"


def test_patched_puts_back_own_attributes_as_they_were() -> None:
    module = types.ModuleType("m")
    module.value = 1
    raw = vars(_Child)["tool"]
    with patched(module, value=2), patched(_Child, tool=staticmethod(lambda: "patched")):
        assert module.value == 2 and _Child.tool() == "patched"
    assert module.value == 1
    assert vars(_Child)["tool"] is raw and isinstance(raw, staticmethod)  # not unwrapped to a function


def test_patched_deletes_what_was_only_inherited_and_restores_on_error() -> None:
    child = _Child()
    with pytest.raises(RuntimeError):
        with patched(_Child, greet=lambda self: "child"), patched(child, greet=lambda: "instance"):
            assert child.greet() == "instance" and _Child().greet() == "child"
            raise RuntimeError("the block fails")
    assert "greet" not in vars(_Child) and "greet" not in vars(child)
    assert child.greet() == "base"


def test_patched_restores_several_attributes_and_new_ones() -> None:
    module = types.ModuleType("m")
    module.a, module.b = 1, 2
    with patched(module, a=10, b=20, c=30):
        assert (module.a, module.b, module.c) == (10, 20, 30)
    assert (module.a, module.b) == (1, 2) and not hasattr(module, "c")
