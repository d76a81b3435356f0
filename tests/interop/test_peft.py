"""An lmforge LoRA adapter exported in peft's format: peft on the transformers export of the base computes the
logits lmforge's adapted model computes (fused q|k|v parts mapped onto GPT-2's c_attn and Llama's q/k/v_proj)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.checkpoints import load_model, write_checksums
from lmforge.finetune.adapter import adapter_info, write_adapter_files
from lmforge.finetune.lora import LoRALinear, apply_lora
from lmforge.interop.hf import export_hf
from lmforge.interop.peft import export_peft
from lmforge.models import build_model, get_preset
from lmforge.models.io import save_model


@pytest.mark.parametrize(("preset", "targets"), [
    ("tiny", ["q", "v", "attn.wo", "mlp.up"]),
    ("llama-tiny", ["q", "k", "v", "attn.wo", "mlp.gate"]),
])
def test_peft_on_the_exported_base_matches_the_adapted_model(tmp_path, preset, targets):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = dataclasses.replace(get_preset(preset), d_model=64, n_layer=2, n_head=4, head_dim=16,
                              vocab_size=300)
    torch.manual_seed(0)
    base_dir = save_model(tmp_path / "base", build_model(cfg), cfg)
    write_checksums(base_dir, ["model.safetensors"])
    model, _ = load_model(base_dir)
    apply_lora(model, targets, rank=4, alpha=8)
    for m in model.modules():  # trained-looking adapters (B starts at zero)
        if isinstance(m, LoRALinear):
            for p in m.lora_B.values():
                torch.nn.init.normal_(p, std=0.05)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    write_adapter_files(adapter_dir, model, cfg, None, adapter_info(4, 8.0, 0.0, targets, base_dir))
    hf_base = export_hf(base_dir, tmp_path / "base_hf")
    peft_dir = export_peft(adapter_dir, tmp_path / "peft", base_hf=hf_base)

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_base)).eval()
    tuned = peft.PeftModel.from_pretrained(hf, str(peft_dir)).eval()
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        ours = model.eval()(x)
        theirs = tuned(x).logits
    assert (ours - load_model(base_dir)[0](x)).abs().max() > 1e-3  # the adapters change the output
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
