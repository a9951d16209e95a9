"""EM for a latent rationale Z: the E-step is GFlowNet fine-tuning of q(Z | X) (the trainer); the M-step
fine-tunes a second LoRA adapter, the likelihood p(Y | X, Z), on rationales drawn from q.

The run's steps are split evenly over ``em_rounds``. After each round's E-step: draw ``m_rationales``
Z ~ q per training example, train the likelihood adapter on (X, Z) -> Y_true (TRL SFT with the label
tokens in the loss), save it atomically as likelihood-round-R.safetensors, make the E-step target use it,
re-score the replay buffers under it and checkpoint (not after the last round, whose buffers no E-step
reads, nor when the M-step kept the old judge: the rewards are the same). On resume a round whose adapter
file exists is loaded, not retrained (re-scoring is a pure function of the adapters, so it is simply
repeated).

Under a launcher (torchrun / accelerate launch) every process runs the same EM: each E-step is the
trainer's (its share of trajectories, gradients all-reduced); each process draws the same M-step
rationales (one seed), TRL splits them over the processes and all-reduces the gradients, so every
process holds the same likelihood adapter; rank 0 alone writes its file and em.jsonl.

The M-step is early-stopped: a seeded share of the training examples (``m_validation``) is held out of
its data, and the adapter of the epoch with the lowest loss on their labels is kept (``m_patience``
epochs without improvement end it). They are held out of the E-step too: q has not seen their labels, so
its rationales for them are like a test sentence's, not label-revealing. With ``m_keep_only_if_better``
the fitted likelihood then has to beat the judge it would replace on them, scored as at test time
(calibrated, the mean probability over q's rationales): otherwise the old judge stays (in round 1 the
base model: a fresh LoRA adapter, B = 0), and its copy is saved as the round's adapter.

Every round appends to em.jsonl the mean log p(Y_true | X, Z) of the training examples (normalized over
the labels, Z ~ q) before and after its M-step: EM should raise it round after round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from gfnlm.baselines.sft import SupervisedSettings
from gfnlm.inference.sampling import sample_per_prompt
from gfnlm.infra.checkpoint import write_atomic
from gfnlm.infra.seeding import library_seed, python_rng, torch_generator
from gfnlm.model.policy import Policy
from gfnlm.tasks.classification.labels import LIKELIHOOD_ADAPTER, held_out_prediction


def likelihood_file(run_dir: Path, round_number: int) -> Path:
    return Path(run_dir) / f"likelihood-round-{round_number}.safetensors"


def add_likelihood_adapter(policy: Policy, config) -> None:
    """The likelihood p(Y | X, Z): a second adapter of the policy's rank on every layer. Added once."""
    if LIKELIHOOD_ADAPTER not in policy.model.peft_config:
        policy.add_adapter(LIKELIHOOD_ADAPTER, seed=config.seed)


def load_latest_likelihood(policy: Policy, run_dir: Path, config) -> bool:
    """Load the run's last M-step adapter as the likelihood; False when no M-step has finished."""
    saved = sorted(Path(run_dir).glob("likelihood-round-*.safetensors"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not saved:
        return False
    add_likelihood_adapter(policy, config)
    policy.load_adapter(saved[-1], LIKELIHOOD_ADAPTER)
    return True


def run_em(trainer, task, resume: bool = False) -> None:
    c = task.config
    policy, run_dir = trainer.policy, trainer.run_dir
    add_likelihood_adapter(policy, c)
    judge_changed = False  # by the last M-step: only then do buffered rewards need re-scoring
    for r in range(1, c.em_rounds + 1):
        end = trainer.config.steps * r // c.em_rounds
        trainer.train(resume=resume and r == 1, until=end)
        path = likelihood_file(run_dir, r)
        judge = policy.adapter_copy(LIKELIHOOD_ADAPTER)
        if trainer.processes.broadcast(path.is_file()):  # rank 0's view of the run folder decides for all
            policy.load_adapter(path, LIKELIHOOD_ADAPTER)
        else:
            m_step(trainer, task, r, path)
        now = policy.adapter_state(LIKELIHOOD_ADAPTER)
        judge_changed = now.keys() != judge.keys() or not all(torch.equal(v, judge[k]) for k, v in now.items())
        trainer.target.likelihood_adapter = LIKELIHOOD_ADAPTER  # a kept fresh adapter judges as the base model
        # resumed past this round: the restored checkpoint is already later; after the last round no E-step
        # reads the buffers again
        if trainer.step == end and judge_changed and r < c.em_rounds:
            trainer.rescore_buffers()
            trainer.save()


def m_step(trainer, task, round_number: int, path: Path) -> dict:
    c = task.config
    policy = trainer.policy
    started = time.perf_counter()
    generator = torch_generator(policy.device, c.seed, "m-step rationales", round_number)
    space = task.action_space().to(policy.device)
    prompts = [tp.ids for tp in task.train_set]
    rationales = sample_per_prompt(policy.model, space, prompts, c.m_rationales, 1.0, generator, c.eval_batch)
    before = label_log_likelihood(policy, task, rationales)
    held = task.m_step_held_out()
    fit_on = [[] if i in held else zs for i, zs in enumerate(rationales)]
    check_on = [zs if i in held else [] for i, zs in enumerate(rationales)]
    old_judge = policy.adapter_copy(LIKELIHOOD_ADAPTER)
    judged = {"old": held_out_prediction(policy, task, rationales, held)}
    settings = SupervisedSettings(epochs=c.m_epochs, lr=c.m_lr, batch_size=c.m_batch_size,
                                  seed=library_seed(c.seed, "m-step fit", round_number),
                                  progress=trainer.config.progress)
    with policy.adapter(LIKELIHOOD_ADAPTER, train=True):
        fitted = task.fit_likelihood(policy, fit_on, settings, validation=check_on, patience=c.m_patience)
    judged["fitted"] = held_out_prediction(policy, task, rationales, held)
    kept = "fitted"
    if c.m_keep_only_if_better and held and judged["fitted"]["log_prob"] <= judged["old"]["log_prob"]:
        policy.set_adapter_state(old_judge, LIKELIHOOD_ADAPTER)
        kept = "old judge" if round_number > 1 else "base model"
    record = {"round": round_number, "step": trainer.step, "label_log_likelihood_before": before,
              "label_log_likelihood_after": label_log_likelihood(policy, task, rationales),
              "m_step_loss": fitted["loss"], "m_step_updates": fitted["steps"],
              "held_out_examples": sorted(held), "best_epoch": fitted.get("best_epoch"),
              "held_out_losses": fitted.get("validation_losses"),
              "held_out_prediction": judged, "kept": kept,
              "m_step_examples": sum(len(zs) for zs in fit_on), "m_step_seconds": time.perf_counter() - started,
              "examples": [task.tokenizer.decode(z) for z in rationales[0][:4]]}
    if trainer.processes.is_main:  # every process holds the same adapter (TRL trains it data-parallel)
        write_atomic(path, lambda tmp: policy.save_adapter(tmp, LIKELIHOOD_ADAPTER))
        with open(Path(trainer.run_dir) / "em.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"EM round {round_number}: log p(Y_true | X, Z) of the training labels "
              f"{record['label_log_likelihood_before']:.3f} -> {record['label_log_likelihood_after']:.3f} after the "
              f"M-step (kept: {kept})", flush=True)
    trainer.processes.barrier()
    return record


def held_out_examples(count: int, share: float, seed: int) -> set[int]:
    """The training examples (indices) whose labels early-stop the M-step: a seeded ``share`` of them, at
    least one when share > 0, never all."""
    if share <= 0 or count < 2:
        return set()
    k = min(count - 1, max(1, round(count * share)))
    return set(python_rng(seed).sample(range(count), k))


@torch.no_grad()
def label_log_likelihood(policy: Policy, task, rationales: list[list[list[int]]]) -> float:
    """Mean over training examples and their rationales of log p(Y_true | X, Z), normalized over labels,
    under the likelihood adapter."""
    prompts = [tp.ids for tp in task.train_set]
    lp = torch.log_softmax(task.rationale_scores(policy, prompts, rationales, LIKELIHOOD_ADAPTER, calibrated=False),
                           dim=-1)
    true = torch.tensor([task.label_of[tp.key] for tp in task.train_set])
    return float(lp[torch.arange(len(prompts)), :, true].mean())
