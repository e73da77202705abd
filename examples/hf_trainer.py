"""An optzoo optimizer inside Hugging Face ``transformers.Trainer``: train, checkpoint, get killed, resume.

    python examples/hf_trainer.py --out /tmp/hf                     # 24 steps, a checkpoint every 8
    python examples/hf_trainer.py --out /tmp/hf --die-at-step 12    # killed (SIGKILL) at step 12
    python examples/hf_trainer.py --out /tmp/hf --resume            # continues from the last checkpoint

The model is a tiny GPT-2 built from a config (nothing is downloaded); the optimizer is passed as
``Trainer(optimizers=(opt, sched))`` with ``opt = optzoo.create_optimizer(model, "adamw", ...)`` and a torch
``LambdaLR`` warmup. The Trainer saves ``optimizer.pt`` (``opt.state_dict()``, loadable with
``torch.load(weights_only=True)``) and restores it on resume; the final weights go to ``OUT/weights.pt``.
"""

from __future__ import annotations

import argparse
import os
import signal
import warnings
from pathlib import Path

import torch
import transformers

import optzoo


class Tokens(torch.utils.data.Dataset):
    """Deterministic token sequences (a copy task: the second half repeats the first)."""

    def __init__(self, n: int = 96, length: int = 16, vocab: int = 64):
        g = torch.Generator().manual_seed(0)
        half = torch.randint(1, vocab, (n, length // 2), generator=g)
        self.ids = torch.cat([half, half], dim=1)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class DieAtStep(transformers.TrainerCallback):
    """Kills the process with SIGKILL (no clean-up) when the given optimizer step begins."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def tiny_gpt2() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--die-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    model = tiny_gpt2()
    opt = optzoo.create_optimizer(model, args.optimizer, lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 5))
    training = transformers.TrainingArguments(
        output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=8, save_steps=8,
        save_strategy="steps", logging_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    callbacks = [DieAtStep(args.die_at_step)] if args.die_at_step is not None else []
    trainer = transformers.Trainer(model=model, args=training, train_dataset=Tokens(), optimizers=(opt, sched),
                                   callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out / "weights.pt")
    print(f"trained {trainer.state.global_step} steps with {opt!r}")


if __name__ == "__main__":
    main()
