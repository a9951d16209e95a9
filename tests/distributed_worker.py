"""`gfnlm` as a launcher runs it, but every rank also saves the parameters it holds after training
(rank-R.safetensors in the run folder), so a test can compare the ranks with each other. A rank still
alive after HANG_SECONDS prints every thread's stack and exits, so that a hang shows where it is."""

import faulthandler
import sys

from safetensors.torch import save_file

import gfnlm.core.trainer
import gfnlm.tasks.classification.em
from gfnlm.cli import main

real_train = gfnlm.core.trainer.Trainer.train


def train_and_save_rank(self, resume=False, **kwargs):
    rows = real_train(self, resume, **kwargs)
    state = self.policy.adapter_state()
    state["log_z"] = self.log_z.values.detach().cpu()
    save_file(state, str(self.run_dir / f"rank-{self.processes.rank}.safetensors"))
    return rows


gfnlm.core.trainer.Trainer.train = train_and_save_rank
real_m_step = gfnlm.tasks.classification.em.m_step


def m_step_and_save_rank(trainer, task, round_number, path):
    record = real_m_step(trainer, task, round_number, path)
    state = trainer.policy.adapter_state(gfnlm.tasks.classification.em.LIKELIHOOD_ADAPTER)
    save_file(state, str(trainer.run_dir / f"likelihood-round-{round_number}-rank-{trainer.processes.rank}.safetensors"))
    return record


gfnlm.tasks.classification.em.m_step = m_step_and_save_rank

HANG_SECONDS = 200  # the launch's own timeout is 240 s; these runs take well under a minute

if __name__ == "__main__":
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    sys.exit(main(sys.argv[1:]))
