"""The methods through the one trainer: frozen parts stay put; a LoRA run saves small adapter checkpoints tied to
their base, loads onto it (merged or not, the same logits), refuses another base, merges and exports."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.checkpoints import is_adapter_checkpoint, load_adapted, load_model, merge_adapter, resolve_checkpoint
from lmforge.errors import UserError
from lmforge.finetune.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, weights_sha256

from . import run_train

FAST = ["--steps", "4", "--optim.lr", "1e-2"]


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    rc, _ = run_train(tiny_data, out, "--steps", "2")
    assert rc == 0
    return resolve_checkpoint(out)


@pytest.fixture(scope="module")
def lora_run(tiny_data, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    rc, records = run_train(tiny_data, out, "--init-from", str(base), "--finetune.method", "lora",
                            "--finetune.lora-rank", "4", "--finetune.lora-targets", "q", "v", "attn.wo", *FAST)
    assert rc == 0
    return out, records


def test_frozen_parts_do_not_move(tiny_data, base, tmp_path):
    rc, records = run_train(tiny_data, tmp_path / "frozen", "--init-from", str(base), "--finetune.method", "frozen",
                            "--finetune.freeze-embeddings", "--finetune.freeze-blocks", "1", *FAST)
    assert rc == 0
    report = next(r["report"] for r in records if r.get("event") == "finetune")
    assert report.startswith("finetune: frozen (embeddings, first 1 blocks)")
    before = load_model(base)[0].state_dict()
    after = load_model(resolve_checkpoint(tmp_path / "frozen"))[0].state_dict()
    for name, t in after.items():
        moved = not torch.equal(t, before[name])
        assert moved == (not name.startswith(("embed.", "blocks.0.", "lm_head."))), name  # lm_head: tied to embed


def test_a_lora_run_saves_only_small_adapters_with_the_base_hash(base, lora_run):
    out, records = lora_run
    report = next(r["report"] for r in records if r.get("event") == "finetune")
    assert report.startswith("finetune: lora r=4 alpha=16 on 12 targets (q, v, wo)")
    ckpt = resolve_checkpoint(out)
    assert is_adapter_checkpoint(ckpt) and not (ckpt / "model.safetensors").exists()
    assert (ckpt / ADAPTER_WEIGHTS).stat().st_size * 10 < (base / "model.safetensors").stat().st_size
    record = json.loads((ckpt / ADAPTER_CONFIG).read_text())
    assert record["base_sha256"] == weights_sha256(base) and record["rank"] == 4
    assert record["targets"] == [f"blocks.{i}.attn.{t}" for i in range(4) for t in ("q", "v", "wo")]


def test_merged_and_unmerged_adapters_give_the_same_logits(base, lora_run):
    ckpt = resolve_checkpoint(lora_run[0])
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        unmerged = load_adapted(ckpt, merge=False)[0](x)
        merged = load_model(ckpt)[0](x)  # the one loader: base + adapter, merged
        plain = load_model(base)[0](x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert (merged - plain).abs().max() > 1e-3  # the adapters learned something


def test_an_adapter_for_another_base_is_one_line(tiny_data, lora_run, tmp_path):
    rc, _ = run_train(tiny_data, tmp_path / "other", "--steps", "2", "--seed", "1")
    assert rc == 0
    with pytest.raises(UserError, match="this adapter was trained on another base model") as e:
        load_adapted(resolve_checkpoint(lora_run[0]), base=resolve_checkpoint(tmp_path / "other"))
    assert "\n" not in e.value.line()


def test_merge_writes_a_plain_checkpoint_that_exports_to_transformers(lora_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import export_hf

    ckpt = resolve_checkpoint(lora_run[0])
    merged_dir = merge_adapter(ckpt, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and not is_adapter_checkpoint(merged_dir)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        ours = load_model(merged_dir)[0](x)
        torch.testing.assert_close(load_model(ckpt)[0](x), ours, atol=1e-5, rtol=0)
        for source in (merged_dir, ckpt):  # export of the merged checkpoint, or of the adapter (merged on the way)
            hf_dir = export_hf(source, tmp_path / f"hf_{source.name}")
            hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
            torch.testing.assert_close(hf(x).logits, ours, atol=1e-4, rtol=0)


def test_a_lora_run_resumes_from_its_adapters(tiny_data, base, tmp_path):
    flags = ["--init-from", str(base), "--finetune.method", "lora", "--optim.lr", "1e-2", "--checkpoint-every", "2"]
    rc, _ = run_train(tiny_data, tmp_path / "whole", *flags, "--steps", "4")
    assert rc == 0
    rc, _ = run_train(tiny_data, tmp_path / "cut", *flags, "--steps", "4")
    assert rc == 0
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")  # as if stopped after the step 2 checkpoint
    rc, _ = run_train(tiny_data, tmp_path / "cut", *flags, "--steps", "4", "--resume")
    assert rc == 0
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        whole = load_model(resolve_checkpoint(tmp_path / "whole"))[0](x)
        resumed = load_model(resolve_checkpoint(tmp_path / "cut"))[0](x)
    torch.testing.assert_close(resumed, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--finetune.method", "lora"], "finetune.method lora adapts a trained model, but no --init-from"),
    (["--finetune.method", "frozen"], "finetune.method frozen freezes nothing"),
    (["--finetune.freeze-embeddings"], "the finetune.freeze_\\* options apply to method frozen"),
])
def test_bad_method_options_are_one_line(tiny_data, tmp_path, capsys, flags, message):
    rc, _ = run_train(tiny_data, tmp_path / "bad", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err


def test_a_bad_target_through_the_cli_is_one_line(tiny_data, base, tmp_path, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "bad", "--init-from", str(base), "--finetune.method", "lora",
                      "--finetune.lora-targets", "c_attn")
    err = capsys.readouterr().err
    assert rc == 2 and "LoRA target pattern 'c_attn' matches no module" in err and len(err.strip().splitlines()) == 1


def test_the_merge_verb_writes_a_checkpoint_and_refuses_a_plain_one(lora_run, base, tmp_path, capsys):
    from lmforge.cli.main import main

    assert main(["merge", str(lora_run[0]), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert "merged" in capsys.readouterr().out
    assert main(["merge", str(base), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "not a LoRA adapter checkpoint" in err and len(err.strip().splitlines()) == 1


def test_export_writes_an_adapter_that_peft_loads_onto_the_exported_base(lora_run, base, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from lmforge.cli.main import main

    assert main(["export", str(base), "--out", str(tmp_path / "base_hf")]) == 0
    assert main(["export", str(lora_run[0]), "--format", "peft", "--base-hf", str(tmp_path / "base_hf"),
                 "--out", str(tmp_path / "peft")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_hf"))
    tuned = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(tuned(x).logits, load_model(resolve_checkpoint(lora_run[0]))[0](x),
                                   atol=1e-4, rtol=0)
