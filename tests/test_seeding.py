"""One seeding rule: a generator takes the run's seed itself, or a seed derived from it and named parts."""

import random
import re
from pathlib import Path

import torch

from gfnlm.infra.seeding import derive_seed, global_seed, python_rng, seed_of, torch_generator


def test_without_parts_a_generator_takes_the_seed_itself():
    assert torch.equal(torch.rand(5, generator=torch_generator("cpu", 7)),
                       torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert python_rng(7).random() == random.Random(7).random()


def test_parts_give_distinct_reproducible_streams():
    a, b = torch_generator("cpu", 7, "evaluate", 0), torch_generator("cpu", 7, "evaluate", 1)
    assert not torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    assert seed_of(7, "evaluate", 0) == derive_seed(7, "evaluate", 0) == seed_of(7, "evaluate", 0)
    assert len({seed_of(s, "x", i) for s in range(20) for i in range(20)}) == 400
    assert all(seed_of(s, "x") >= 2**32 for s in range(20))  # far from the small seeds used directly


def test_global_seed_leaves_the_callers_stream_where_it_was():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with global_seed(11):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with global_seed(11):
        assert torch.equal(torch.rand(4), inside)


def test_no_module_seeds_a_generator_by_hand():
    """Generators come from gfnlm.infra.seeding only, so no module invents its own seed formula."""
    package = Path(__file__).resolve().parent.parent / "src" / "gfnlm"
    by_hand = re.compile(r"torch\.Generator\(|random\.Random\(|\.manual_seed\(|\brandom\.seed\(|default_rng\(")
    found = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py") if path.name != "seeding.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if by_hand.search(line)]
    assert found == []
