"""The patch of torch.nn.Module.__call__: reversible, idempotent, invisible to compilers and tracers."""

from __future__ import annotations

import torch

from aitune.torch.jit import _hook, _tracker, disable_jit_tuning, enable_jit_tuning, is_enabled

from .helpers import Net


def test_install_and_uninstall_restore_exact_originals() -> None:
    Module = torch.nn.Module
    before = {name: Module.__dict__[name] for name in ("__call__", "load_state_dict", "_apply")}
    assert enable_jit_tuning() is True
    assert is_enabled()
    assert Module.__dict__["__call__"] is not before["__call__"]
    assert Module.__dict__["load_state_dict"] is not before["load_state_dict"]
    assert enable_jit_tuning() is False  # idempotent
    assert disable_jit_tuning() is True
    assert disable_jit_tuning() is False
    for name, original in before.items():
        assert Module.__dict__[name] is original
    assert Module.__call__ is Module._wrapped_call_impl


def test_untracked_and_compiled_modules_pass_through() -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(3, 16)
    expected = torch.nn.Module._wrapped_call_impl(net, x)
    # A module compiled by the user with Module.compile() keeps working through the hook.
    net.compile(backend="eager")
    torch.testing.assert_close(net(x), expected)


def test_dynamo_fullgraph_compiles_through_the_hook() -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(3, 16)
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # raises on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), torch.nn.Module._wrapped_call_impl(net, x))
    # The compiler's tracing calls were not recorded as user calls.
    st = _tracker.STATES.get(id(net))
    assert st is None or all(sig.calls == 0 for sig in st.signatures.values())


def test_export_and_symbolic_trace_work_through_the_hook() -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(3, 16)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), torch.nn.Module._wrapped_call_impl(net, x))
    traced = torch.fx.symbolic_trace(net)
    torch.testing.assert_close(traced(x), torch.nn.Module._wrapped_call_impl(net, x))
    assert torch.nn.Module.__dict__["__call__"] is _hook._aitune_call


def test_jit_trace_works_through_the_hook() -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(3, 16)
    traced = torch.jit.trace(net, (x,))
    torch.testing.assert_close(traced(x), torch.nn.Module._wrapped_call_impl(net, x))


def test_import_modules_enable_and_disable() -> None:
    import importlib
    import sys

    sys.modules.pop("aitune.torch.jit.enable", None)
    sys.modules.pop("aitune.torch.jit.disable", None)
    importlib.import_module("aitune.torch.jit.enable")
    assert is_enabled()
    importlib.import_module("aitune.torch.jit.disable")
    assert not is_enabled()
    assert torch.nn.Module.__call__ is torch.nn.Module._wrapped_call_impl
