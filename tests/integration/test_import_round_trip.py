"""Someone else's model to a run on the first try: `anytrain import-hf`, then `train checkpoint.load=DIR` with no
model or tokenizer field typed by hand; every disagreement listed at once; a foreign tokenizer refused; and
`trainer.max_steps=0` to evaluate only."""

import json
import subprocess

import pytest
import yaml

transformers = pytest.importorskip("transformers")

from data import build_tokenizer  # noqa: E402
from trainer.config import to_train_config  # noqa: E402

from ..conftest import ANYTRAIN, TINY, TRAIN  # noqa: E402

# What a user types besides checkpoint.load: the data shape and the run's length, never the model.
RUN = ["data.seq_len=64", "trainer.micro_batch=4", "trainer.global_batch=8", "trainer.eval_batches=4"]
RUN += ["trainer.progress_bar=false", "schedule.warmup_steps=1", "trainer.max_steps=2", "trainer.eval_every=0"]
HF = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def imported(compose, tok_cache, tmp_path_factory):
    """A Hugging Face Llama directory with its own tokenizer.json, imported with `anytrain import-hf`."""
    root = tmp_path_factory.mktemp("import")
    tokenizer = build_tokenizer(to_train_config(compose(*TINY, tok_cache)).data)
    config = transformers.LlamaConfig(**HF, vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "hf")
    tokenizer.save(str(root / "hf" / "tokenizer.json"))
    (root / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    r = subprocess.run([*ANYTRAIN, "import-hf", root / "hf", root / "ck"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"train checkpoint.load={root / 'ck'}" in r.stdout  # it says how to train from it
    return root / "ck"


def _train(*overrides, cwd):
    return subprocess.run([*TRAIN, *map(str, overrides)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_takes_the_architecture_and_the_tokenizer_from_the_import(imported, tmp_path):
    r = _train(*RUN, f"checkpoint.load={imported}", f"trainer.run_dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "model.dim=64" in out and "model.n_layers=2" in out and "data.tokenizer.kind=file" in out
    assert f"weights loaded from {imported}: model weights only" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["model"]["dim"], saved["model"]["n_kv_heads"], saved["model"]["vocab_size"]) == (64, 2, 512)
    copy = tmp_path / "run" / "tokenizer.json"  # a copy in the run: the import may move, a step-N dir be pruned
    assert saved["data"]["tokenizer"]["path"] == str(copy.resolve())
    assert copy.read_bytes() == (imported / "tokenizer.json").read_bytes()


def test_every_disagreement_is_listed_at_once_with_the_fix(imported, tmp_path):
    r = _train(*RUN, f"checkpoint.load={imported}", "model=debug", f"trainer.run_dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    for field in ("model.dim=64", "model.n_layers=2", "model.ffn_hidden=128", "model.norm_eps=1e-06"):
        assert field in line.split("add `")[1], line  # each field's fix, in one override list
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_tokenizer_other_than_the_checkpoints_is_refused(imported, tmp_path, tok_cache):
    other = [tok_cache, "data.tokenizer.kind=bpe", "data.tokenizer.vocab_size=384", "data.tokenizer.train_docs=500"]
    r = _train(*RUN, *other, f"checkpoint.load={imported}", f"trainer.run_dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2 and "is not the one checkpoint" in r.stderr, r.stderr[-3000:]
    assert f"data.tokenizer.path={imported / 'tokenizer.json'}" in r.stderr


def test_max_steps_zero_evaluates_and_exits(imported, tmp_path):
    r = _train(
        *RUN, "trainer.max_steps=0", f"checkpoint.load={imported}", f"trainer.run_dir={tmp_path}/r", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 0 and rows[0]["val_loss"] > 0
    assert "evaluation only" in r.stdout + r.stderr
    assert not (tmp_path / "r" / "checkpoints").exists() and not (tmp_path / "r" / "DONE").exists()


def test_rerunning_the_same_command_resumes_with_what_was_taken(imported, tmp_path):
    """The second run of the same command resumes from its own checkpoint with the same architecture and
    tokenizer, which it takes from there and from the run directory's copy of the tokenizer."""
    common = [*RUN, f"checkpoint.load={imported}", f"trainer.run_dir={tmp_path}/run", "checkpoint.every=2"]
    assert _train(*common, cwd=tmp_path).returncode == 0
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (imported / "tokenizer.json").read_bytes()
    r = _train(*[o.replace("max_steps=2", "max_steps=4") for o in common], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "weights loaded from" in r.stdout + r.stderr and "resumed at step 2" in r.stdout + r.stderr
    r = _train(*RUN, "trainer.max_steps=0", f"trainer.run_dir={tmp_path}/run", f"checkpoint.load={imported}",
               cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "trainer.max_steps=0 evaluates in a run directory of its own" in r.stderr


def test_an_import_without_a_tokenizer_must_be_told_which(tmp_path):
    config = transformers.LlamaConfig(**HF, vocab_size=512, max_position_embeddings=1024)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    r = subprocess.run([*ANYTRAIN, "import-hf", tmp_path / "hf", tmp_path / "ck"], capture_output=True, text=True)
    assert r.returncode == 0 and "has no tokenizer.json" in r.stdout
    r = _train(*RUN, f"checkpoint.load={tmp_path / 'ck'}", f"trainer.run_dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2 and "holds no tokenizer.json, so its tokenizer is unknown" in r.stderr
