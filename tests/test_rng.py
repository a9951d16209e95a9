"""The random-number task's exploration: its replay buffer starts with every number of the support."""

from gfnlm.core.trainer import Trainer
from gfnlm.runs import prepare_model, resolve


def rng_trainer(tmp_path, tiny_model_dir, **options):
    spec = resolve("rng", None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path), "lora_r": 4,
                                 "progress": False, "checkpoint_every": 1000, "buffer_tolerance": 0.0,
                                 "task": {"prompt": "numbers: 4, 7,", "high": 20}, **options})
    return Trainer(spec.config, spec.task, prepare_model(spec), tmp_path)


def normalized_number_probabilities(trainer) -> list[float]:
    """Exact q(n) of every number, normalized over the numbers."""
    q = trainer.task.exact_number_probabilities(trainer.policy.model, trainer.space)
    return [v / sum(q.values()) for v in q.values()]


def test_the_buffer_starts_with_every_number_at_reward_zero(tmp_path, tiny_model_dir):
    trainer = rng_trainer(tmp_path, tiny_model_dir)
    trainer.seed_buffer()
    items = trainer.buffer.items["rng-0"]
    assert sorted(it.tokens for it in items) == sorted(trainer.task.canonical.values())
    assert len(items) == 21 and all(it.score == 0.0 for it in items)


def test_training_on_the_seeds_alone_gives_every_number_its_share(tmp_path, tiny_model_dir):
    """Replay only (nothing is ever sampled): the numbers the base model rarely writes get their mass from the
    seeds. min_len defaults to the shortest number (" " and a digit), so the lone " " is no completion whose
    stop probability must first fall to e^-60 (with min_len 1 the tiny model does not converge here)."""
    trainer = rng_trainer(tmp_path, tiny_model_dir, steps=60, lr=1e-2, logz_lr=1.0, replay_prob=1.0,
                          tempered_prob=0.0, warmup_steps=0, task={"prompt": "numbers: 4, 7,", "high": 20})
    n = len(trainer.task.canonical)
    before = n * min(normalized_number_probabilities(trainer))
    rows = trainer.train()
    after = n * min(normalized_number_probabilities(trainer))
    assert all(row["replay"] == 1 for row in rows)
    assert before < 0.5 and after > 0.8
