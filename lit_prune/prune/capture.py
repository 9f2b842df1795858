"""Capture inside a forward pass: run a model to one sublayer (or from one layer on), and record the inputs of the
output projections, without editing the model.

A transformer layer has two sublayers, multi-head attention (MHA) and the FFN, each ending with an output projection
(W_O, W_down) and a residual sum, with a LayerNorm after the sum (post-LayerNorm encoders: BERT and most others) or
before the sublayer (pre-LayerNorm: ModernBERT). The methods that refit a sublayer (Kwon's mask tuning, KPrune's
weight tuning) need, per calibration batch, the projection's input, its output and the residual sum (called the
pre-LayerNorm sum below, whichever side its LayerNorm is on: :func:`on_sum` finds it); methods that score units need
the projection inputs of every sublayer. These helpers get them with forward hooks, and cut the pass short:

* :func:`run_to_norm` stops at the sublayer's residual sum (nothing later runs);
* :func:`start_at` starts the pass at a given encoder layer from cached hidden states (nothing earlier runs), so a
  layer-by-layer process runs each layer once per batch instead of the whole prefix again; :func:`start_forward_at`
  does the same while leaving the model whole outside its forward passes (for code that inspects it first);
* :func:`layer_output` gives one encoder layer's output from its input;
* :func:`run_layer` runs one encoder layer once and gives both sublayers' pre-LayerNorm sums and its output;
* :class:`ProjectionInputs` records the (masked) inputs of the output projections of a range of sublayers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lit_prune.core.arch import get_adapter
from lit_prune.core.masking import apply_masks
from lit_prune.core.masks import PruningMasks

Sublayer = Literal["attention", "ffn"]


def sublayer_of(index: int) -> tuple[int, Sublayer]:
    """Sublayer ``index`` in 0..2L-1 → ``(layer, "attention" | "ffn")`` (MHA₀, FFN₀, MHA₁, ...)."""
    return index // 2, ("attention" if index % 2 == 0 else "ffn")


class StopForward(Exception):
    """Raised by a hook once the sublayer of interest has run: nothing later is needed."""


def sublayer_projection(model: nn.Module, layer: int, sublayer: Sublayer) -> nn.Linear:
    """The output projection of a sublayer: W_O of the attention, W_down of the FFN."""
    modules = get_adapter(model).layer(layer)
    return modules.attn_out if sublayer == "attention" else modules.ffn_down


def on_sum(model: nn.Module, layer: int, sublayer: Sublayer, record: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """A hook that hands ``record`` the sublayer's residual sum (its projection's output plus the residual): in a
    post-LayerNorm encoder the input of the LayerNorm after it; in a pre-LayerNorm one (ModernBERT) the input of the
    FFN's LayerNorm for the attention, and the layer's output (the next layer's input) for the FFN. ``record`` may
    raise :class:`StopForward`."""
    adapter = get_adapter(model)
    modules = adapter.layer(layer)
    if adapter.norm_position == "post":
        norm = modules.attn_norm if sublayer == "attention" else modules.ffn_norm
    elif sublayer == "attention":
        norm = modules.ffn_norm
    else:
        return on_next_input(model, layer, record)
    return norm.register_forward_pre_hook(lambda module, args: record(args[0]))


def feed_encoder(encoder: nn.Module, hidden: torch.Tensor) -> RemovableHandle:
    """A hook that makes the layer list of ``encoder`` (the module holding it) receive ``hidden``: whatever ran
    before it (embeddings, ELECTRA's projection of its narrower embeddings) is overridden.

    Where the encoder is a module of its own, a pre-hook replaces the hidden states it is given (the encoders take
    them as their first argument or as ``hidden_states=``). Where the layer list sits in the base model itself
    (ModernBERT), the embeddings' output is replaced instead (their LayerNorm included: it runs before layer 0)."""
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is not None and hasattr(encoder, "get_input_embeddings"):  # the base model itself
        return embeddings.register_forward_hook(lambda module, args, output: hidden)

    def replace(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return encoder.register_forward_pre_hook(replace, with_kwargs=True)


class _LayerCut:
    """Cuts an encoder's layer list to the layers from ``layer`` on, and puts it back.

    DeBERTa-v2's encoder may apply a convolution after its first layer (``conv``, in configs with a
    ``conv_kernel_size``); it runs after the first layer of the list, so a list cut above layer 0 runs without it.
    """

    def __init__(self, model: nn.Module, layer: int) -> None:
        parent_path, _, self.name = get_adapter(model).spec.layers.rpartition(".")
        self.encoder = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
        self.layers = getattr(self.encoder, self.name)
        self.layer = layer
        self.conv = getattr(self.encoder, "conv", None)

    def cut(self, *_: Any) -> None:
        setattr(self.encoder, self.name, nn.ModuleList(list(self.layers)[self.layer:]))
        if self.conv is not None and self.layer > 0:
            self.encoder.conv = None

    def restore(self, *_: Any) -> None:
        setattr(self.encoder, self.name, self.layers)
        if self.conv is not None:
            self.encoder.conv = self.conv


@contextlib.contextmanager
def start_at(model: nn.Module, layer: int, hidden: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, ``model``'s forward pass starts at encoder layer ``layer`` with input ``hidden``.

    The encoder's input is replaced by ``hidden`` (:func:`feed_encoder`) and its layer list is cut to the layers
    from ``layer`` on (the supported encoders run their layer lists in order, each layer taking and returning the
    hidden states; the attention mask is built from the inputs as before). ``hidden=None`` changes nothing (start
    from the embeddings).
    """
    if hidden is None:
        yield
        return
    layers = _LayerCut(model, layer)
    handle = feed_encoder(layers.encoder, hidden)
    layers.cut()
    try:
        yield
    finally:
        layers.restore()
        handle.remove()


@contextlib.contextmanager
def start_forward_at(model: nn.Module, layer: int, hidden: torch.Tensor | None) -> Iterator[None]:
    """:func:`start_at`, with the encoder's layer list cut only while a forward pass runs.

    Inside the block the model looks whole (code that reads its layers before running it, such as
    :func:`~lit_prune.core.arch.get_adapter`, :func:`~lit_prune.core.masking.apply_masks` or
    :func:`~lit_prune.prune.importance.mask_gradients`, works unchanged), and every forward pass starts at encoder
    layer ``layer`` with input ``hidden``: nothing below it runs, forward or backward. ``hidden=None`` changes
    nothing.
    """
    if hidden is None:
        yield
        return
    layers = _LayerCut(model, layer)
    handles = [feed_encoder(layers.encoder, hidden), layers.encoder.register_forward_pre_hook(layers.cut),
               layers.encoder.register_forward_hook(layers.restore)]
    try:
        yield
    finally:
        layers.restore()  # also after a pass stopped inside the encoder (StopForward), where the hook never ran
        for handle in handles:
            handle.remove()


def _run_hooked(model: nn.Module, masks: PruningMasks | None, inputs: Mapping[str, torch.Tensor], layer: int,
                start: torch.Tensor | None, handles: list) -> None:
    """Run ``model`` (masked, or unmasked for ``None``) from encoder layer ``layer`` (``start``: its input; ``None``
    runs from the embeddings) until a hook stops it with :class:`StopForward`; then remove the hooks' ``handles``."""
    try:
        with contextlib.ExitStack() as stack:
            if masks is not None:
                stack.enter_context(apply_masks(model, masks))
            stack.enter_context(start_at(model, layer, start))
            model(**inputs)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def on_next_input(model: nn.Module, layer: int, record: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """A hook that hands ``record`` the next layer's input: what the layer above ``layer`` receives (its output, plus
    whatever the encoder applies in between, such as DeBERTa-v2's convolution after layer 0), or the last layer's
    output. ``record`` may raise :class:`StopForward`: nothing above runs."""
    adapter = get_adapter(model)
    if layer + 1 < adapter.num_layers:  # the encoders hand a layer its hidden states as the first argument
        return adapter.layers[layer + 1].register_forward_pre_hook(lambda module, args: record(args[0]))
    return adapter.layers[layer].register_forward_hook(
        lambda module, args, output: record(output[0] if isinstance(output, tuple) else output))


def layer_output(model: nn.Module, masks: PruningMasks | None, inputs: Mapping[str, torch.Tensor], layer: int,
                  start: torch.Tensor | None) -> torch.Tensor:
    """Encoder layer ``layer``'s output (masked, or unmasked for ``None``) given its input ``start``: the next
    layer's input (see :func:`on_next_input`)."""
    captured: list[torch.Tensor] = []

    def record(hidden: torch.Tensor) -> None:
        captured.append(hidden)
        raise StopForward

    handle = on_next_input(model, layer, record)
    _run_hooked(model, masks, inputs, layer, start, [handle])
    assert captured, "the forward pass never reached the layer"
    return captured[0].detach()


def run_to_norm(model: nn.Module, masks: PruningMasks | None, inputs: Mapping[str, torch.Tensor], layer: int,
                 sublayer: Sublayer, start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` (masked, or unmasked for ``None``) until the sublayer's residual sum (:func:`on_sum`); capture
    its tensors.

    ``start``: the hidden states entering ``layer`` (``None``: run from the embeddings).
    """
    projection = sublayer_projection(model, layer, sublayer)
    captured: dict[str, torch.Tensor] = {}

    def on_projection(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["unit_inputs"], captured["projection"] = args[0], output  # after the masking pre-hook

    def on_norm(hidden: torch.Tensor) -> None:
        captured["pre_norm"] = hidden  # projection output + residual
        raise StopForward

    handles = [projection.register_forward_hook(on_projection), on_sum(model, layer, sublayer, on_norm)]
    _run_hooked(model, masks, inputs, layer, start, handles)
    assert "pre_norm" in captured, "the forward pass never reached the sublayer's residual sum"
    return captured


def run_layer(model: nn.Module, masks: PruningMasks | None, inputs: Mapping[str, torch.Tensor], layer: int,
              start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run encoder layer ``layer`` once (masked, or unmasked for ``None``) and capture what a layer-by-layer
    refit needs of it: both sublayers' pre-LayerNorm sums and the layer's output (nothing after it runs).

    One run of the layer gives the targets of its two sublayers and the next layer's input, where
    :func:`run_to_norm` twice and :func:`layer_output` would run it three times.

    Args:
        start: the hidden states entering ``layer`` (``None``: run from the embeddings).

    Returns:
        ``{"attention": ..., "ffn": ..., "output": ...}``, each (B, s, d): the attention's and the FFN's projection
        output plus residual (their residual sums), and the layer's output (the next layer's input).
    """
    captured: dict[str, torch.Tensor] = {}

    def on_norm(name: str, hidden: torch.Tensor) -> None:
        captured[name] = hidden.detach()

    def on_output(hidden: torch.Tensor) -> None:
        captured["output"] = hidden.detach()
        raise StopForward

    # registered in this order, the FFN's sum (the layer output, in a pre-LayerNorm encoder) is recorded first
    handles = [on_sum(model, layer, "attention", lambda hidden: on_norm("attention", hidden)),
               on_sum(model, layer, "ffn", lambda hidden: on_norm("ffn", hidden)),
               on_next_input(model, layer, on_output)]
    _run_hooked(model, masks, inputs, layer, start, handles)
    assert len(captured) == 3, "the forward pass never reached the end of the layer"
    return captured


class ProjectionInputs:
    """Forward hooks that record the (masked) inputs of the output projections of the sublayers ≥ ``target``, and
    the target's projection output and pre-LayerNorm sum. Use as a context manager (the hooks go on exit).

    Attributes:
        inputs: sublayer index → (B, s, C) the projection's input, after the masking pre-hook.
        projection_output, pre_norm: (B, s, d) the target's projection output and its sum with the residual.
    """

    def __init__(self, model: nn.Module, target: int) -> None:
        adapter = get_adapter(model)
        self.inputs: dict[int, torch.Tensor] = {}
        self.handles = []
        for index in range(target, 2 * adapter.num_layers):
            projection = sublayer_projection(model, *sublayer_of(index))
            # forward hooks see the arguments after the masking pre-hook
            self.handles.append(projection.register_forward_hook(
                lambda m, args, out, index=index: self._on_projection(index, args[0], out)))
        self.target = target
        self.handles.append(on_sum(model, *sublayer_of(target), self._on_norm))
        self.projection_output: torch.Tensor | None = None
        self.pre_norm: torch.Tensor | None = None

    def _on_projection(self, index: int, inputs: torch.Tensor, output: torch.Tensor) -> None:
        self.inputs[index] = inputs.detach()
        if index == self.target:
            self.projection_output = output.detach()

    def _on_norm(self, hidden: torch.Tensor) -> None:
        self.pre_norm = hidden.detach()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> ProjectionInputs:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


__all__ = ["ProjectionInputs", "StopForward", "Sublayer", "layer_output", "run_layer", "run_to_norm", "start_at",
           "start_forward_at", "sublayer_projection", "sublayer_of", "on_sum"]
