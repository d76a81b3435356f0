"""`TrainConfig`: every option of a training run, each both a YAML key and a flag.

A run starts from a named model preset (`--preset tiny`); any `model.*` option given in the YAML file or on the
command line overrides the preset's value, and the vocabulary size comes from the prepared data's tokenizer unless
set. The resolved config is written to `OUT/config.yaml`, so `lmforge train --config OUT/config.yaml` reproduces
the run and `lmforge train --out OUT --resume` continues it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

from lmforge.config import Config, field, variant
from lmforge.data.tokenizer import check_vocab_fits
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.finetune import FinetuneConfig
from lmforge.models.config import PRESETS, ModelConfig, get_preset
from lmforge.models.registry import Kind, kind_of
from lmforge.parallel.parallelize import ParallelConfig
from lmforge.runtime import PRECISIONS
from lmforge.train.objectives import Options, options_classes
from lmforge.train.objectives.options import VOCAB_FIX

SCHEDULES = ("cosine", "linear", "step", "exponential", "constant", "wsd")
OPTIMIZERS = ("adamw", "muon")
# With --on-nonfinite skip, this many non-finite steps in a row means the run has diverged for good: stop anyway.
MAX_CONSECUTIVE_SKIPS = 25


@dataclass
class OptimConfig(Config):
    name: str = field("adamw", "optimizer: adamw for every parameter, or muon: Muon (orthogonalised momentum, "
                               "torch.optim.Muon) for the hidden weight matrices of the blocks and AdamW for the "
                               "rest (embeddings, output head, norms, biases)", choices=OPTIMIZERS)
    lr: float = field(1e-3, "peak learning rate (reached at the end of warmup); with muon, AdamW's", min=0)
    muon_lr: float = field(0.02, "muon: peak learning rate of the hidden matrices", min=0)
    muon_momentum: float = field(0.95, "muon: momentum (Nesterov)", min=0, lt=1)
    muon_weight_decay: float = field(0.0, "muon: decoupled weight decay of the hidden matrices", min=0)
    weight_decay: float = field(0.1, "AdamW weight decay, applied to matrices and embeddings only",
                                min=0)
    betas: tuple[float, float] = field((0.9, 0.95), "AdamW betas", min=0, lt=1)
    eps: float = field(1e-8, "AdamW epsilon", gt=0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0 = no clipping)", min=0)
    schedule: str = field("cosine", "learning-rate schedule after warmup", choices=SCHEDULES)
    warmup_steps: int | None = field(None, "linear warmup steps (default: steps/20, at most 1000)",
                                     min=0)
    min_lr_ratio: float = field(0.1, "lowest learning rate as a fraction of lr (end of cosine/linear; floor of "
                                     "step/exponential)", min=0, max=1)
    decay_fraction: float = field(0.2, "wsd (warmup-stable-decay) schedule: the last fraction of the steps, over "
                                       "which the lr falls linearly to min_lr_ratio (constant before)",
                                  gt=0, max=1)
    step_size: int = field(1000, "step/exponential schedules: steps per decay by gamma", min=1)
    gamma: float = field(0.5, "step/exponential schedules: decay factor per step_size steps",
                         gt=0, max=1)


def _tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


@dataclass
class TrainConfig(Config):
    data: str | None = field(None, "prepared data directory (made by `lmforge prepare`)")
    out: str = field("runs/train", "run directory: checkpoints, metrics, plot and the effective config go here")
    recipe: str | None = field(None, "a named recipe of options to start from (train/recipes/NAME.yaml in the "
                                     "package: fast = Muon, QK-norm, ReLU², untied head, logit soft-cap, WSD "
                                     "schedule; nanogpt-cpu = nanoGPT's README CPU run); --config and flags "
                                     "override it")
    preset: str = field("tiny", f"model preset to start from, one of {', '.join(PRESETS)}; model.* options "
                                "override its fields")
    init_from: str | None = field(None, "start from this checkpoint's weights and architecture (fine-tuning): an "
                                        "lmforge checkpoint or run directory, or a Hugging Face model directory; "
                                        "the objective's head is added fresh where the checkpoint has none, and "
                                        "one line reports what was loaded, new and dropped (--preset is ignored)")
    model: ModelConfig = field(default_factory=ModelConfig, help="model options (override the preset)")
    objective: str = field("causal_lm", "training objective: causal_lm (decoders, recurrent), mlm / mlm_nsp "
                                        "(encoders), span_corruption / seq2seq (encoder-decoders), contrastive "
                                        "(encoders), classification (families with a classify head), chat_sft "
                                        "(decoders: conversations, loss on the answers), distill (a student of a "
                                        "teacher checkpoint: --objective-options.teacher)")
    objective_options: Options = field(default_factory=Options, variants=("objective", options_classes),
                                       help="options of the chosen objective (each objective takes only its own)")
    steps: int = field(1000, "optimizer steps to train for", min=1)
    batch_size: int = field(16, "sequences per micro-batch (per process under torchrun)", min=1)
    seq_len: int | None = field(None, "tokens per training sequence (default: model.max_seq_len)",
                                    min=1)
    grad_accum: int = field(1, "micro-batches accumulated per optimizer step", min=1)
    optim: OptimConfig = field(default_factory=OptimConfig, help="optimizer and schedule")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig,
                                     help="fine-tuning method: full, frozen layers or LoRA adapters (what trains; "
                                          "docs/finetuning.md)")
    eval_every: int = field(250, "evaluate on the val split every N steps (0 = only at the end)",
                            min=0)
    eval_batches: int = field(100, "batches per evaluation (0 = the whole val split)", min=0)
    early_stop_patience: int = field(0, "stop after this many evaluations without a better --select-by metric "
                                        "(0 = off)", min=0)
    select_by: str = field("val_loss", "the evaluation metric that picks checkpoints/best and early stopping: "
                                       "val_loss, or one the objective reports (accuracy, f1, exact_match, bleu, "
                                       "chrf, rouge_l, ...; the val_ prefix is optional); lower is better for loss, "
                                       "ppl and bpb, higher for the others")
    checkpoint_every: int = field(500, "save a checkpoint every N steps (and always at the end)",
                                  min=1)
    keep_last: int = field(3, "keep the newest N step checkpoints (0 = keep all); best/ is kept apart", min=0)
    device: str = field("auto", "device: auto picks CUDA, then Apple MPS, then the CPU", choices=DEVICES)
    precision: str = field("auto", "auto = bf16 autocast on CUDA (fp16 + loss scaling where bf16 is missing), "
                                   "fp32 elsewhere", choices=PRECISIONS)
    compile: bool | None = field(None, "torch.compile the model (default: on for CUDA, off elsewhere)")
    parallel: ParallelConfig = field(default_factory=ParallelConfig,
                                     help="data parallelism and memory savers; under `torchrun --nproc_per_node N "
                                          "-m lmforge train ...` each process trains on --batch-size sequences "
                                          "of an N x larger global batch (docs/distributed.md)")
    seed: int = field(0, "seed for initialisation, data order and dropout")
    resume: bool = field(False, "continue from the newest complete checkpoint in out (fresh start if none)")
    on_nonfinite: str = field("stop", "on a NaN/inf loss: stop (exit 2), or skip the step's update (counted as a "
                                      f"step; {MAX_CONSECUTIVE_SKIPS} in a row still stop)", choices=("stop", "skip"))
    log_every: int = field(10, "log training metrics every N steps", min=1)
    tensorboard: bool = field(_tensorboard_installed(), "write TensorBoard event files to out/tensorboard")

    def __post_init__(self) -> None:
        # The objective's own options dataclass (from_dict builds it; a TrainConfig made in code may pass a dict, or
        # leave the default).
        self.objective_options = variant(TrainConfig, "objective_options", self.objective, self.objective_options)
        if self.seq_len is None:
            self.seq_len = self.model.max_seq_len
        if self.optim.warmup_steps is None:
            self.optim.warmup_steps = min(1000, self.steps // 20)
        self.validate()

    def validate(self) -> None:
        if not self.data:
            raise UserError("no prepared data given", fix="pass --data DIR, a directory made by `lmforge prepare`")
        # A recurrent model has no position table: its max_seq_len is only the default training length.
        if self.seq_len > self.model.max_seq_len and kind_of(self.model) is not Kind.RECURRENT:
            raise UserError(f"seq_len {self.seq_len} is longer than the model's max_seq_len "
                            f"{self.model.max_seq_len}",
                            fix="lower --seq-len or raise --model.max-seq-len")
        if self.finetune.method == "lora" and not self.init_from:
            raise UserError("finetune.method lora adapts a trained model, but no --init-from is given",
                            fix="pass --init-from CKPT (the base model the adapters are trained on)")
        if self.finetune.method == "lora" and self.parallel.sharded_checkpoints:
            raise UserError("LoRA runs save adapter checkpoints, not sharded ones",
                            fix="leave --parallel.sharded-checkpoints out with --finetune.method lora")
        problems = []
        if len(self.optim.betas) != 2:
            problems.append(f"optim.betas needs two values, got {list(self.optim.betas)}")
        if self.finetune.keep_zeros and self.optim.name == "muon":
            problems.append("finetune.keep_zeros masks gradients, but Muon's orthogonalised update moves every "
                            "weight of a matrix (use optim.name adamw)")
        if self.finetune.keep_zeros and self.parallel.strategy == "fsdp":
            problems.append("finetune.keep_zeros hooks the weights before FSDP replaces them by shards (use "
                            "--parallel.strategy ddp)")
        if self.optim.name == "muon" and self.parallel.strategy == "fsdp":
            problems.append("optim.name muon orthogonalises whole matrices, which FSDP shards (use --parallel.strategy "
                            "ddp, or optim.name adamw)")
        if problems:
            raise UserError("invalid training config: " + "; ".join(problems),
                            fix="see `lmforge train --help`")

    @classmethod
    def config_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fill `model` from the preset under the user's `model.*` overrides, and vocab_size from the data.

        Called by `lmforge.config.resolve` on the merged YAML + flags, before the dataclass is built.
        """
        data = dict(data)
        if data.get("recipe"):
            from lmforge.train.recipe import load_recipe, under_recipe

            data = under_recipe(load_recipe(str(data["recipe"])), data)
        if not isinstance(data.get("model") or {}, dict):
            return data  # from_dict reports the wrong type
        user_model = {k.replace("-", "_"): v for k, v in (data.get("model") or {}).items()}
        if data.get("init_from"):
            from lmforge.train.init import source_config

            # The checkpoint's architecture; its head and labels are the objective's to choose.
            base = {**source_config(data["init_from"]).to_dict(), "head": "lm", "labels": []}
        else:
            base = get_preset(str(data.get("preset", "tiny"))).to_dict()
        # Fields the preset only derived (d_ff = 4*d_model, n_kv_head = n_head, ...: those defaulting to None) are
        # re-derived after the overrides, so `--model.d-model 64` on the tiny preset gives d_ff 256, not 512.
        optional = [f.name for f in dataclasses.fields(ModelConfig) if f.default is None]
        derived = ModelConfig(**{**base, **dict.fromkeys(optional)})
        for name in optional:
            if base[name] == getattr(derived, name):
                del base[name]
        model = {**base, **user_model}
        if data.get("data"):
            from lmforge.data.loaders import TokenDataset

            dataset = TokenDataset.open(data["data"], "train")
            vocab = dataset.vocab_size
            if data.get("init_from"):  # the checkpoint's embedding table: the data's tokenizer must fit it
                check_vocab_fits(vocab, int(model["vocab_size"]), model="the --init-from checkpoint's vocabulary",
                                 where=data["data"], fix="prepare the data with the checkpoint's tokenizer "
                                                         "(lmforge prepare --tokenizer-from CKPT)")
                if data.get("objective") == "chat_sft":  # the table grows by the chat tokens (train/init.py)
                    model["vocab_size"] = max(int(model["vocab_size"]), vocab + _chat_tokens_to_add(dataset))
            elif "vocab_size" not in user_model:
                # span_corruption's T5 sentinels take the ids after the tokenizer's vocabulary.
                sentinels = 0
                if data.get("objective") == "span_corruption":
                    from lmforge.train.objectives.span_corruption import SpanCorruptionOptions

                    options = data.get("objective_options") or {}
                    sentinels = int(options.get("sentinels", SpanCorruptionOptions.sentinels))
                elif data.get("objective") == "chat_sft":  # the chat tokens take the ids after the vocabulary
                    sentinels = _chat_tokens_to_add(dataset)
                model["vocab_size"] = vocab + sentinels
            else:
                check_vocab_fits(vocab, int(user_model["vocab_size"]), model="model.vocab_size", where=data["data"],
                                 fix=VOCAB_FIX)
        data["model"] = model
        return data


def _chat_tokens_to_add(dataset) -> int:
    """How many chat tokens (`lmforge.data.chat`) the data's tokenizer lacks: chat_sft adds them after it."""
    from lmforge.data.chat import missing_chat_tokens
    from lmforge.data.tokenizer import load_tokenizer

    return missing_chat_tokens(load_tokenizer(dataset.tokenizer_path))
