"""The random-number task's exploration: its replay buffer starts with every number of the support."""

from gfnlm.core.trainer import Trainer
from gfnlm.runs import prepare_model, resolve


def rng_trainer(tmp_path, tiny_model_dir, **options):
    spec = resolve("rng", None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path), "lora_r": 4,
                                 "progress": False, "checkpoint_every": 1000, "buffer_tolerance": 0.0,
                                 "task": {"prompt": "numbers: 4, 7,", "high": 20}, **options})
    return Trainer(spec.config, spec.task, prepare_model(spec), tmp_path)


def test_the_buffer_starts_with_every_number_at_reward_zero(tmp_path, tiny_model_dir):
    trainer = rng_trainer(tmp_path, tiny_model_dir)
    trainer.seed_buffer()
    items = trainer.buffer.items["rng-0"]
    assert sorted(it.tokens for it in items) == sorted(trainer.task.canonical.values())
    assert len(items) == 21 and all(it.score == 0.0 for it in items)

