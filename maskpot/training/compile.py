"""Compiled training forward (``train.compile: true``): ``torch.compile`` of the model step.

Energy-centric models compute forces = -dE/dr with ``autograd.grad(create_graph=True)`` inside
their forward, and the force loss then needs a second backward. ``torch.compile`` cannot
differentiate a compiled region twice, so the forward is first traced with ``make_fx``: the
force gradient becomes explicit aten ops in one flat graph of (parameters, buffers, positions,
numbers, cell, batch, edges) -> outputs, which autograd — and so ``torch.compile`` /
AOTAutograd — differentiates once (the way nequip compiles its training models). The
neighbour search stays eager in front of the graph: its output size depends on the data.

Dynamic sizes: the atom, edge and frame counts are symbolic in the trace (one graph for every
batch); every other size (3, parameter shapes) is static.

:func:`compile_forward` returns a callable with the model's signature (``batch dict -> outputs
dict``) or, when compilation is unavailable or fails, the eager model and the reason, which
the trainer logs (a run never fails because it asked for compilation).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from maskpot.models.common import species_checks_disabled

# Batch keys the models read besides the graph structure, and the per-atom optional ones.
_ATOM_KEYS = ("mask", "mask_numbers")
_OUTPUT_KEYS = ("energy", "forces", "vectors")


def _symbolic_fakes(tensors: Sequence[Tensor], dynamic: Sequence[Sequence[int]]):
    """Fake copies of ``tensors`` in one fake mode whose shape env makes only the listed dims
    symbolic. No duck shaping: two counts that happen to be equal in the traced batch (atoms
    and edges, say) stay two symbols unless an operation makes them one (nequip does the same)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False), allow_non_fake_inputs=True)
    fakes = []
    for t, dims in zip(tensors, dynamic):
        sizes = [DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(t.dim())]
        fakes.append(mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes)))
    return mode, fakes


def _reattach_saved_outputs(graph: torch.fx.GraphModule) -> None:
    """Remove the ``detach`` nodes of the trace, in place.

    When autograd's backward reads a tensor saved from a forward *output* (sqrt, norm,
    sigmoid, ...), the dispatcher sees ``detach`` and autograd re-attaches the output's history
    above it; ``make_fx`` records only the ``detach``. Differentiated again at run time, the
    trace would lose those second-order paths (parameter gradients of the force loss, off by
    ~1e-3 relative; measured). The models detach nothing in their forward themselves, so every
    ``detach`` of the trace is such an unpack (or the positions' own, whose gradient nobody
    reads): each is replaced by its input. :func:`compile_forward` checks the gradients.
    """
    detach = torch.ops.aten.detach.default
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is detach:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()


class CompiledForward:
    """``model``'s training forward as a compiled graph (see the module docstring).

    Call it like the model: ``out = compiled(batch)``. The parameters and buffers are read from
    ``model`` at every call, so optimiser steps, EMA swaps and ``load_state_dict`` are seen.
    """

    def __init__(self, model: torch.nn.Module, batch: Dict[str, Tensor], cpp_wrapper: bool = True) -> None:
        self.model = model
        self.names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        self.keys = tuple(k for k in _ATOM_KEYS if k in batch)
        self.out_keys: List[str] = []  # set by the trace
        # cpp_wrapper: the compiled graph's kernel calls from C++, not Python (the steps of
        # rMD17 molecules are ~200 small kernels: measured 20.5 -> 9.5 ms forward, TensorNet 64x2)
        self.graph = torch.compile(self._trace(batch), dynamic=True, fullgraph=True,
                                   options={"cpp_wrapper": bool(cpp_wrapper)})

    def _state(self) -> List[Tensor]:
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        return [params[n] if n in params else buffers[n] for n in self.names]

    def _inputs(self, batch: Dict[str, Tensor]) -> List[Tensor]:
        positions, cell = batch["positions"], batch["cell"]
        with torch.no_grad():
            edge_index, _, shifts = self.model.neighbors(positions.detach(), cell, batch["pbc"], batch["batch"])
        return [positions.detach(), batch["numbers"], cell, batch["batch"], edge_index, shifts] + [batch[k] for k in self.keys]

    def _trace(self, batch: Dict[str, Tensor]) -> torch.fx.GraphModule:
        from torch.fx.experimental.proxy_tensor import make_fx

        model, names, keys = self.model, self.names, self.keys
        n_state = len(names)

        def step(*args: Tensor) -> Tuple[Tensor, ...]:
            state, (positions, numbers, cell, batch_index, edge_index, shifts), extra = (
                args[:n_state], args[n_state:n_state + 6], args[n_state + 6:])
            data = {"positions": positions.detach().requires_grad_(True), "numbers": numbers, "cell": cell,
                    "pbc": torch.zeros((cell.shape[0], 3), dtype=torch.bool, device=cell.device),
                    "batch": batch_index, "edge_index": edge_index, "shifts": shifts}
            data.update(dict(zip(keys, extra)))
            out = torch.func.functional_call(model, dict(zip(names, state)), (data,), strict=True)
            self.out_keys = [k for k in _OUTPUT_KEYS if k in out]  # what the graph returns, in order
            return tuple(out[k] for k in self.out_keys)

        state = self._state()
        inputs = self._inputs(batch)
        # dynamic dims: atoms (positions, numbers, batch, per-atom keys), frames (cell), edges
        dynamic = [()] * n_state + [(0,), (0,), (0,), (0,), (1,), (0,)] + [(0,)] * len(keys)
        mode, fakes = _symbolic_fakes(state + inputs, dynamic)
        # the species check is data-dependent; the training frames were checked when loaded
        with species_checks_disabled(model), mode:
            graph = make_fx(step, tracing_mode="symbolic")(*fakes)
        _reattach_saved_outputs(graph)
        return graph

    def __call__(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        if tuple(k for k in _ATOM_KEYS if k in batch) != self.keys:
            raise ValueError(f"compiled forward: traced with batch keys {self.keys}, got {sorted(batch)}")
        outputs = self.graph(*self._state(), *self._inputs(batch))
        return dict(zip(self.out_keys, outputs))


def _outputs_and_gradients(forward: Callable[[Dict[str, Tensor]], Dict[str, Tensor]], model: torch.nn.Module,
                           batch: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[Tensor]]:
    """Outputs of ``forward(batch)`` and the parameter gradients of a loss on all of them."""
    out = forward({k: (v.detach().clone() if k == "positions" else v) for k, v in batch.items()})
    loss = sum((value.double() ** 2).sum() for value in out.values())
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def compile_forward(model: torch.nn.Module, batch: Dict[str, Tensor]
                    ) -> Tuple[Callable[[Dict[str, Tensor]], Dict[str, Tensor]], str]:
    """(forward, reason): a :class:`CompiledForward`, checked on ``batch`` against the eager
    model (outputs and parameter gradients), or ``(model, why not)`` when tracing, compiling or
    the check fails."""
    if not model.training:
        return model, "compile: the model must be in training mode"
    want, want_grads = _outputs_and_gradients(model, model, batch)
    failure = ""
    for cpp_wrapper in (True, False):  # the C++ wrapper first; plain inductor if it fails
        try:
            compiled = CompiledForward(model, batch, cpp_wrapper=cpp_wrapper)
            got, got_grads = _outputs_and_gradients(compiled, model, batch)
            break
        except Exception as exc:  # unsupported op, no C++ compiler, ...: train eagerly, say why
            failure = f"torch.compile of the training step failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
    else:
        return model, failure
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 1e-8
    for key, value in want.items():
        if key not in got or got[key].shape != value.shape:
            return model, f"the compiled forward lacks output {key!r} or has the wrong shape"
        if not _close(got[key], value, tol):
            return model, f"the compiled forward differs from eager on output {key!r}"
    if not all(_close(a, b, tol) for a, b in zip(got_grads, want_grads)):
        return model, "the compiled forward's parameter gradients differ from eager"
    return compiled, ""


def _close(a: Tensor, b: Tensor, tol: float) -> bool:
    """Equal within ``tol`` relative to the larger magnitude of ``b`` (float noise of sums)."""
    a, b = a.detach(), b.detach()
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * (float(b.abs().max()) if b.numel() else 0.0) + 1e-12))
