"""transformers' output-capturing hooks (installed for good, acting only while an enclosing model collects
hidden states or attentions) below a module: JIT mode tunes it whole, and while a collection is under way its
calls run eagerly so the hooks fire. The real transformers hook, on a small module of aitune's tests."""

from __future__ import annotations

import pytest
import torch

from aitune.torch._signature import _hooks
from aitune.torch.jit import _tracker, enable_jit_tuning

from .helpers import FakeBackend, Net

capturing = pytest.importorskip("transformers.utils.output_capturing")
if not hasattr(capturing, "install_output_capuring_hook"):
    pytest.skip("this transformers version has no output-capturing hooks", allow_module_level=True)


def test_inert_hooks_below_do_not_block_fusing_and_a_collection_runs_eagerly(fake_backend: None) -> None:
    net, x = Net().eval(), torch.randn(4, 16)
    capturing.install_output_capuring_hook(net.blocks[0], "hidden_states", 0)
    assert _hooks.inert_hook(next(iter(net.blocks[0]._forward_hooks.values())))
    assert _hooks.hooked_submodule(net) == "blocks.0"  # what the explicit API still goes by
    assert _hooks.hooked_submodule(net, inert_too=False) is None
    enable_jit_tuning()
    with torch.no_grad():
        net(x)
        net(x)
        st = _tracker.STATES[id(net)]
        assert st.report_state() == "tuned" and st.library_hooks, st.reason
        FakeBackend.calls.clear()
        served = net(x)
        assert FakeBackend.calls == ["Net"]  # no collection: the engine serves
        assert not _hooks.library_collecting()

        collected: dict[str, list[torch.Tensor]] = {"hidden_states": []}
        token = capturing._active_collector.set(collected)  # as an enclosing model asked for hidden states
        try:
            assert _hooks.library_collecting()
            out = net(x)
        finally:
            capturing._active_collector.reset(token)
    assert FakeBackend.calls == ["Net"], "a collecting call must run eagerly, not through the engine"
    # The hook fired: the input of blocks.0 (the first hidden state) and its output were collected.
    assert len(collected["hidden_states"]) == 2, collected
    torch.testing.assert_close(collected["hidden_states"][1], net.blocks[0](x))
    torch.testing.assert_close(out, served)
    # Still tuned afterwards: the next call without a collection is the engine's again.
    with torch.no_grad():
        net(x)
    assert FakeBackend.calls == ["Net", "Net"]


def test_another_hook_below_still_hands_the_module_to_its_children() -> None:
    net = Net().eval()
    net.blocks[1].register_forward_hook(lambda mod, args, out: None)
    assert _hooks.hooked_submodule(net, inert_too=False) == "blocks.1"
