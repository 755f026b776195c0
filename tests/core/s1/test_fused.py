"""S1's decode step through core/lm/fused.py's one C++ call a layer (q/k norms, wide heads, the fast stack's
per-row cache slots): the same logits as the modules' torch ops within the path's rounding, and batch-invariant."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.s1_models import TINY_S1, TINY_SEMANTIC_BEGIN
from core.lm import fused, paths
from core.s1 import lm as s1_lm
from core.s1.config import DualARConfig

from .support import dual_ar_cases
from .test_quantize import relative_error, same_format_limit

PROMPTS = ("prompt", "prompt_2refs", "prompt_noref")


@pytest.fixture(scope="module")
def models():
    """The golden model's shapes, but widths of whole int4 groups (int4 layers with padded inputs are not
    fused) and random norm weights (so that a q/k norm applied without its weight shows)."""
    torch.manual_seed(0)
    config = DualARConfig(**dict(TINY_S1, intermediate_size=192))
    model = s1_lm.DualARTransformer(config, TINY_SEMANTIC_BEGIN, TINY_SEMANTIC_BEGIN + config.codebook_size - 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2)
    model.eval()
    return {"float32": model, **{fmt: copy.deepcopy(model).quantize(fmt) for fmt in ("int8", "int4")}}


@torch.inference_mode()
def one_step(model, keys: tuple[str, ...]) -> torch.Tensor:
    """Prompt i (all but its last column) prefilled into slot i, then its last column decoded in one batched
    slow step and the fast stack run over every codebook position: token and codebook logits, row by row."""
    cases = dual_ar_cases()
    prompts = [torch.from_numpy(cases[key]) for key in keys]
    model.drop_caches()
    model.setup_caches(len(prompts), max(p.size(1) for p in prompts))
    for slot, prompt in enumerate(prompts):
        model.forward_slow(prompt[None, :, :-1], torch.arange(prompt.size(1) - 1), slot=slot)
    columns = torch.stack([p[:, -1:] for p in prompts])
    positions = [p.size(1) - 1 for p in prompts]
    logits, hidden = model.forward_slow_rows(columns, list(range(len(prompts))), positions)
    model.clear_fast_cache()
    fast = [model.forward_fast(hidden, 0)]
    for k in range(1, model.config.num_codebooks):  # fed the prompts' own codes
        fast.append(model.forward_fast(model.fast_embeddings(columns[:, k, 0].long()), k))
    return torch.cat([logits, torch.cat(fast, dim=1)], dim=1)


@pytest.mark.parametrize("path", sorted(k for k in paths.KERNEL_VARIANTS if not k.endswith("-1t")))
@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_fused_s1_layers_match_the_modules_within_the_paths_rounding(models, monkeypatch, fmt, path):
    if path not in paths.decode_candidates(fmt):
        pytest.skip(f"{path} is not a {fmt} decode path on this machine")
    ran = []
    stack = s1_lm.fused_stack
    monkeypatch.setattr(s1_lm, "fused_stack", lambda layers, h: ran.append(stack(layers, h)) or ran[-1])
    with paths.using(fmt, decode=path, prefill="float32"):
        fused = one_step(models[fmt], PROMPTS)
        alone = one_step(models[fmt], PROMPTS[1:2])
        monkeypatch.setattr(s1_lm, "fused_stack", lambda layers, h: None)
        modules = one_step(models[fmt], PROMPTS)
    assert len(ran) == 2 * (1 + models[fmt].config.num_codebooks) and all(s is not None for s in ran)
    # The linears are the same kernels; only the attention's and q/k norms' rounding differs.
    assert relative_error(fused, modules) < same_format_limit(fmt, path)
    assert torch.equal(alone[0], fused[1])  # rows never see each other, to the bit


@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_the_s1_layer_stacks_give_the_bits_of_one_call_a_layer(models, monkeypatch, fmt):
    """The slow and the fast stack each in one C++ call a step (fused.py's LayerStack): the layers' own calls."""
    kernels = [path for path in paths.decode_candidates(fmt) if path.startswith("kernel")]
    if not kernels:
        pytest.skip("no decode kernel here")
    stacks = []
    stack = fused.layer_stack
    monkeypatch.setattr(fused, "layer_stack", lambda *a: stacks.append(stack(*a)) or stacks[-1])
    with paths.using(fmt, decode=kernels[0], prefill="float32"):
        together = one_step(models[fmt], PROMPTS)
        monkeypatch.setattr(fused, "layer_stack", lambda *a: None)
        apart = one_step(models[fmt], PROMPTS)
    assert len(stacks) == 1 + models[fmt].config.num_codebooks and all(s is not None for s in stacks)
    assert torch.equal(together, apart)
