"""The training form takes PT2E QAT: conv-BN pairs fold, softmax/LayerNorm stay float on request."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import require_module

import hrvit_mobile
from hrvit_mobile.models.float_islands import float_module_types
from hrvit_mobile.weights import load_recipe_weights

xnnpack_quantizer = require_module("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
quantize_pt2e = require_module("torchao.quantization.pt2e.quantize_pt2e")

QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"


def _qat_convert(softmax_float: bool):
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=5, img_size=(64, 64))
    # recipe weights: the official init zeroes attn_bn's scale, which QAT's simulated BN fold
    # divides by; trained checkpoints have non-zero scales
    load_recipe_weights(model)
    model.train()
    torch.manual_seed(0)
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 16, 16))
    program = torch.export.export(model, (x,))
    quantizer = xnnpack_quantizer.XNNPACKQuantizer().set_global(
        xnnpack_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    )
    for module_type in float_module_types(softmax=softmax_float, layernorm=True):
        quantizer.set_module_type(module_type, None)
    prepared = quantize_pt2e.prepare_qat_pt2e(program.module(), quantizer)
    optimizer = torch.optim.AdamW(prepared.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = F.cross_entropy(prepared(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return quantize_pt2e.convert_pt2e(prepared), losses


def _quantized_consumers(graph, predicate) -> int:
    nodes = [n for n in graph.nodes if n.op == "call_function" and predicate(n)]
    return sum(1 for n in nodes for user in n.users if str(user.target) == QUANTIZE)


@pytest.fixture(scope="module")
def kept_float():
    return _qat_convert(softmax_float=True)


def test_qat_trains_and_folds_every_batchnorm(kept_float) -> None:
    converted, losses = kept_float
    assert all(torch.isfinite(torch.tensor(losses)))
    ops = [str(n.target) for n in converted.graph.nodes if n.op == "call_function"]
    assert not any("batch_norm" in op for op in ops), "a BN was not folded into its conv"
    assert sum("dequantize_per_channel" in op for op in ops) > 0  # weights really quantized
    softmax_out = _quantized_consumers(converted.graph, lambda n: "softmax" in str(n.target))
    assert softmax_out == 0


@pytest.mark.parametrize("keep_float", [True, False])
def test_float_switch_controls_the_masked_softmax(nano_model, keep_float: bool) -> None:
    """PTQ of the deploy form: with the switch on, no softmax reads a quantized tensor; with it off
    the quantizer observes the mask add, whose range the -100 padded-key logits stretch."""
    deployed = hrvit_mobile.deploy(nano_model, img_size=(64, 64))
    x = torch.randn(1, 3, 64, 64)
    quantizer = xnnpack_quantizer.XNNPACKQuantizer().set_global(
        xnnpack_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    for module_type in float_module_types(softmax=keep_float, layernorm=keep_float):
        quantizer.set_module_type(module_type, None)
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(deployed, (x,)).module(), quantizer)
    prepared(x)
    graph = quantize_pt2e.convert_pt2e(prepared).graph
    softmaxes = [n for n in graph.nodes if "softmax" in str(n.target)]
    fed_quantized = [n for n in softmaxes if "dequantize" in str(n.args[0].target)]
    assert softmaxes
    assert (len(fed_quantized) == 0) == keep_float
