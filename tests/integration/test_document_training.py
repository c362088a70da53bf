"""Document masking through the trainer: EOS taken from the tokenizer, a run that trains, the checks made before
any step, and a Hugging Face export that gives anytrain's logits for one document."""

import json

import pytest
import torch

from trainer import distributed
from trainer.build import build_run
from trainer.config import to_train_config
from trainer.interop import export_hf
from trainer.loop import fit

from ..conftest import TINY

RUN = [*TINY, "model.attention=document", "model.positions=document", "trainer.log_every=1", "trainer.eval_every=0"]


def test_a_document_masked_run_trains(compose, tok_cache, tmp_path):
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=12", "schedule.warmup_steps=2", "optim.lr=3e-3"))
    last = fit(cfg, tmp_path)
    saved = (tmp_path / "config.yaml").read_text()
    assert "eos_id: null" not in saved and "document_kernel: auto" in saved  # EOS from the tokenizer; kernel per device
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert last["val_loss"] < rows[0]["val_loss"] - 0.1 and losses[-1] < losses[0]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["model.eos_id=3"], "is not the tokenizer's EOS"),
        (["trainer.attention_kernels=[flash]"], "cannot: add efficient or math"),
        (["model.document_kernel=flex"], "model.document_kernel=flex needs a device of"),
    ],
)
def test_what_cannot_mask_is_refused_before_any_step(compose, tok_cache, tmp_path, overrides, says):
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=2", "schedule.warmup_steps=1", *overrides))
    with pytest.raises(ValueError, match=says):
        fit(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_export_gives_anytrains_logits_for_one_document(compose, tok_cache, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = to_train_config(
        compose(*RUN, tok_cache, "trainer.max_steps=2", "schedule.warmup_steps=1", "checkpoint.every=2")
    )
    fit(cfg, tmp_path / "run")
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "run", tmp_path / "hf", "fp32")).eval()
    resumed = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", "schedule.warmup_steps=1"))
    run = build_run(resumed, tmp_path / "run", distributed.Ranks(), torch.device("cpu"))  # the trained weights
    eos = run.cfg.model.eos_id
    windows = [row[None, :-1] for b in run.val_batches for row in b]  # real held-out windows, cut at both ends
    packed = next(w for w in windows if int((w == eos).sum()) >= 2)  # one that holds a whole document
    ends = (packed[0] == eos).nonzero().flatten().tolist()
    assert len(ends) >= 2, "the window should hold a whole document"
    first, last = ends[0] + 1, ends[1]  # one whole document, EOS included, inside the packed window
    with torch.no_grad():
        ours = run.model(packed)[0, first : last + 1]
        theirs = hf(packed[:, first : last + 1]).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
