"""The code route: a reward written in Python. A next sentence Z after X with exactly the number of words the
input asks for, in proportion to p_LM(Z | X) among such sentences (a miss of k words costs 3k nats, so the
policy is guided towards the count rather than told only yes or no).

    python examples/word_count/word_count.py [--model embedded] [--steps 60] [--output_dir runs/word-count]
"""

from __future__ import annotations

import argparse

import gfnlm

INPUTS = [{"X": "The lighthouse keeper climbed the stairs one last time.", "words": "6"},
          {"X": "Every morning the baker opened the shop before dawn.", "words": "6"},
          {"X": "The river had flooded the lower fields overnight.", "words": "8"},
          {"X": "Our neighbor keeps bees in the back garden.", "words": "8"},
          {"X": "The train left the station ten minutes late.", "words": "6"},
          {"X": "She found a letter hidden inside the old piano.", "words": "8"}]
TEST_INPUTS = [{"X": "The museum reopened after a year of repairs.", "words": "6"},
               {"X": "A fox crossed the road in front of our car.", "words": "8"}]


def word_count_reward(texts: list[str], inputs: list[dict]) -> list[float]:
    """log-reward: -3 per word away from the count the input asks for (0 when exact)."""
    return [-3.0 * abs(len(text.split()) - int(row["words"])) for text, row in zip(texts, inputs)]


def main(argv: list[str] | None = None) -> gfnlm.api.Run:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output_dir", default="runs/word-count")
    parser.add_argument("--eval_samples", type=int, default=8)
    args = parser.parse_args(argv)
    run = gfnlm.train(
        INPUTS, test_inputs=TEST_INPUTS,
        reward=[gfnlm.lm("{Z}.", context="{X}", renormalize=True), gfnlm.function(word_count_reward)],
        model=args.model, dtype="auto", steps=args.steps, trajectories_per_prompt=8, lr=5e-4, log_z="batch",
        warmup_steps=10,
        buffer_tolerance=0.0, checkpoint_every=20, output_dir=args.output_dir, max_len=16,
        eval_samples=args.eval_samples, eval_methods="gfn,sampling,tempered,base_smc,gfn_smc")
    for row in TEST_INPUTS:
        print(f"{row['X']} ({row['words']} words) ->", run.sample(n=3, input=row))
    return run


if __name__ == "__main__":
    main()
