"""The TRL baseline of `make bench`: `SFTTrainer` set up like the main job's `LabelTrainer`."""

from __future__ import annotations


def build_trl_trainer(recipe):
    """TRL's `SFTTrainer` with the recipe's model, data, prompts, LoRA, batch size, optimizer and precision.

    The model is loaded exactly as ours (`load_model`, frozen), and TRL adds the same LoRA adapters through
    ``peft_config``. The data is the prompt/completion pairs our task writes, so both trainers learn the
    same text; TRL appends the EOS and masks the prompt (``completion_only_loss=True``).

    Returns:
        `(loaded, trainer)`.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from trainer_ext.data import load_split
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.modeling.methods import lora_targets
    from trainer_ext.tasks import LabelTask

    set_seed(recipe.training.seed)
    m, lora, args = recipe.model, recipe.lora, recipe.training
    loaded = load_model(m.model_name_or_path, quantization=m.quantization, method="none", dtype=m.dtype)
    scope = "all" if lora.method == "lora-all" else "attention"
    peft_config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.lora_target_modules or lora_targets(loaded.model, scope)),
        fan_in_fan_out=any(type(module).__name__ == "Conv1D" for module in loaded.model.modules()),
        bias="none",
        task_type="CAUSAL_LM",
    )
    train = load_split(recipe.data, "train", labels=list(recipe.task.labels))
    task = LabelTask.from_settings(recipe.task, shot_examples=train, seed=recipe.data.sample_seed)
    data = Dataset.from_list(
        [{"prompt": task.prompt(e.text), "completion": task.completion(e.label)} for e in train]
    )
    config = SFTConfig(
        output_dir=args.output_dir,
        completion_only_loss=True,
        max_length=recipe.task.max_length,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        optim=args.optim,
        bf16=args.bf16,
        use_cpu=args.bf16 and not torch.cuda.is_available(),
        gradient_checkpointing=args.gradient_checkpointing,
        train_sampling_strategy=args.train_sampling_strategy,
        seed=args.seed,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=loaded.model,
        args=config,
        train_dataset=data,
        processing_class=loaded.tokenizer,
        peft_config=peft_config,
    )
    return loaded, trainer
