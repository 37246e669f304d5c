"""A rank of a transformers Trainer run under DDP (gloo, CPU) with CaptureCallback, for the tests."""
from __future__ import annotations

import os

import torch


def train_with_callback(rank: int, world_size: int, root: str) -> dict:
    # the Trainer (through accelerate) reads the launch from the environment, as under torchrun
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from gradstore.torch import CaptureCallback, GradientCapture

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=32))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (8, 16), generator=g)]
    args = TrainingArguments(output_dir=f"{root}/out", use_cpu=True, ddp_backend="gloo",
                             per_device_train_batch_size=2, num_train_epochs=2, report_to=[],
                             save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, seed=0)
    capture = GradientCapture(f"{root}/trainer.gs")
    trainer = Trainer(model=model, args=args, train_dataset=data)
    callback = CaptureCallback(capture, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    return {"registered": callback.registered, "stats": vars(capture.stats),
            "global_step": trainer.state.global_step, "closed": capture._closed,
            "names": sorted(n for n, _ in model.named_parameters())}
