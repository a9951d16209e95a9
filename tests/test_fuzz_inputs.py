"""Property tests: random bytes and malformed rows given to the loaders and the config parser never
escape as a traceback; they are returned or rejected with the project's own error and a message."""

import json

from hypothesis import given
from hypothesis import strategies as st

from gfnlm.core.buffer import ReplayBuffer
from gfnlm.core.config import TrainConfig, build, merge, parse_overrides, read_yaml
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.text_files import read_prompt_file
from gfnlm.runs import resolve
from gfnlm.tasks import TASKS
from gfnlm.tasks.classification.data import load_labelled_jsonl
from gfnlm.tasks.infilling.stories import COLUMNS, load_stories_csv

KEYS = [f.name for f in TrainConfig.__dataclass_fields__.values()] + ["lr_", "task", "tsk", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["nan", "-inf", "1e400", "0x10", "true", "3", "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def rejected_cleanly(call):
    try:
        call()
    except GfnlmError as exc:
        assert str(exc).strip(), "an error needs a message"
        return True
    return False


@given(st.binary(max_size=300))
def test_prompt_files_of_random_bytes(tmp_path, data):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    if not rejected_cleanly(lambda: read_prompt_file(path)):
        assert all(isinstance(p, str) and p.strip() for p in read_prompt_file(path))


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_config_files_of_random_bytes(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    rejected_cleanly(lambda: build(TrainConfig, read_yaml(path)))


@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5), st.sampled_from(sorted(TASKS)))
def test_config_mappings_with_random_values(tmp_path, mapping, task):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(mapping))
    if not rejected_cleanly(lambda: resolve(task, str(path), {})):
        resolve(task, str(path), {})  # accepted configs resolve again identically


@given(st.lists(st.one_of(st.sampled_from(["--lr", "--steps", "--task", "--task.low", "--task.x.y", "--", "--.",
                                           "--seed=", "--objective=tb", "--lr.x"]),
                          st.text(max_size=8)), max_size=8))
def test_command_line_overrides_of_random_tokens(tokens):
    rejected_cleanly(lambda: build(TrainConfig, merge({}, parse_overrides(tokens))))


row = st.fixed_dictionaries({}, optional={
    "key": values, "tokens": values, "policy_mask": values, "log_rewards": values, "text": values})


@given(st.lists(st.one_of(row.map(json.dumps), st.text(max_size=40), st.just("[" * 5000)), max_size=4))
def test_replay_buffer_files_with_malformed_rows(tmp_path, lines):
    path = tmp_path / "buffer.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    rejected_cleanly(lambda: ReplayBuffer(10).load(path))


@given(st.binary(max_size=200))
def test_replay_buffer_files_of_random_bytes(tmp_path, data):
    path = tmp_path / "buffer.jsonl"
    path.write_bytes(data)
    rejected_cleanly(lambda: ReplayBuffer(10).load(path))


labelled_row = st.fixed_dictionaries({}, optional={"text": values, "label": st.one_of(values, st.sampled_from(
    ["objective", "subjective", 0, 1, 2, -1, " objective "])), "label_text": values})


@given(st.lists(st.one_of(labelled_row.map(json.dumps), st.text(max_size=40), st.just("{" * 5000)), max_size=4))
def test_labelled_data_files_with_malformed_rows(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    if not rejected_cleanly(lambda: load_labelled_jsonl(path, ["objective", "subjective"])):
        assert all(r.text and r.label in (0, 1) for r in load_labelled_jsonl(path, ["objective", "subjective"]))


@given(st.binary(max_size=200))
def test_labelled_data_files_of_random_bytes(tmp_path, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    rejected_cleanly(lambda: load_labelled_jsonl(path, ["a", "b"]))


@given(st.lists(st.one_of(st.just(",".join(COLUMNS)), st.text(max_size=60),
                          st.lists(st.text(max_size=8), max_size=8).map(",".join)), max_size=5))
def test_story_files_with_malformed_rows(tmp_path, lines):
    path = tmp_path / "stories.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    if not rejected_cleanly(lambda: load_stories_csv(path)):
        assert all(len(s.sentences) == 5 and all(s.sentences) for s in load_stories_csv(path))


@given(st.binary(max_size=200))
def test_story_files_of_random_bytes(tmp_path, data):
    path = tmp_path / "stories.csv"
    path.write_bytes(data)
    rejected_cleanly(lambda: load_stories_csv(path))
