"""Export to / import from the Hugging Face format, checked against transformers itself (and lm-eval)."""

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from models import ModelConfig, build_model, hf  # noqa: E402
from trainer import checkpointing as ckpt  # noqa: E402
from trainer import distributed as env  # noqa: E402
from trainer.build import build_run  # noqa: E402
from trainer.cli.anytrain import main as anytrain  # noqa: E402
from trainer.config import to_train_config  # noqa: E402
from trainer.interop import export_hf, import_hf, read_consolidated_metadata  # noqa: E402
from trainer.loop import fit  # noqa: E402

from ..conftest import TINY  # noqa: E402


def random_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "ffn_hidden": 128, "vocab_size": 512, **kw})
    model = build_model(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that a misplaced norm weight shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def load_hf(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def max_diff(model, hf_model, tokens) -> float:
    return (model(tokens) - hf_model(tokens).logits).abs().max().item()


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("kv", [None, 2], ids=["mha", "gqa"])
def test_export_computes_the_same_logits(tmp_path, style, tie, kv):
    model = random_model(rope_style=style, tie_embeddings=tie, n_kv_heads=kv)
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())
    hf_model = load_hf(export_hf(src, tmp_path / "hf", dtype="fp32"))
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, 512, (2, 48))
    assert max_diff(model, hf_model, tokens) < 1e-4
    if style == "interleaved":  # the same weights without the row permutation compute something else
        cfg = model.cfg
        wrong = hf.to_hf_state(model.state_dict(), cfg, permute=False)
        hf_model.load_state_dict(wrong, strict=not tie)
        assert max_diff(model, hf_model, tokens) > 1e-2


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_qk_norm_exports_as_qwen3(tmp_path, style):
    model = random_model(rope_style=style, qk_norm=True, n_kv_heads=2)
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())
    hf_model = load_hf(export_hf(src, tmp_path / "hf", dtype="fp32"))
    assert type(hf_model).__name__ == "Qwen3ForCausalLM"
    assert max_diff(model, hf_model, torch.randint(0, 512, (2, 48))) < 1e-4


def test_greedy_generation_matches(tmp_path):
    model = random_model(rope_style="interleaved", tie_embeddings=True, n_kv_heads=2)
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())
    hf_model = load_hf(export_hf(src, tmp_path / "hf", dtype="fp32"))
    prompt = torch.randint(0, 512, (1, 12))
    ours = prompt
    with torch.no_grad():
        for _ in range(8):
            ours = torch.cat((ours, model(ours)[:, -1].argmax(-1, keepdim=True)), dim=1)
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8)
    assert theirs.tolist() == ours.tolist()


@pytest.fixture(scope="module")
def trained(compose, tok_cache, tmp_path_factory):
    """A real 3-step run with interleaved RoPE: its checkpoint and its resolved config."""
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [*TINY, tok_cache, "trainer.max_steps=3", "schedule.warmup_steps=1", "checkpoint.every=3"]
    cfg = to_train_config(compose(*overrides, "model.rope_style=interleaved", "trainer.eval_every=0"))
    fit(cfg, run_dir)
    return run_dir / "checkpoints" / "step-3"


def test_trained_checkpoint_exports_with_tokenizer_and_provenance(trained, tmp_path):
    cfg, state, meta = ckpt.load_model_state(trained)
    model = build_model(cfg).eval()
    model.load_state_dict(state)
    out32 = export_hf(trained.parent.parent, tmp_path / "fp32", dtype="fp32")  # a run dir resolves to its newest
    out16 = export_hf(trained, tmp_path / "bf16")  # bf16 by default

    tok = AutoTokenizer.from_pretrained(out32)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.eos_token_id == json.loads((out32 / "config.json").read_text())["eos_token_id"] is not None
    text = "ROMEO: But soft, what light through yonder window breaks?"
    ids = tok(text, return_tensors="pt").input_ids
    from tokenizers import Tokenizer

    assert ids[0].tolist() == Tokenizer.from_file(str(trained / "tokenizer.json")).encode(text).ids
    assert tok.decode(ids[0]) == text

    prov = json.loads((out32 / "anytrain_provenance.json").read_text())
    assert prov["step"] == 3 and prov["tokens_seen"] == 3 * 8 * 64 and prov["rope"]["source_style"] == "interleaved"
    assert prov["source_checkpoint"] == str(trained.resolve())

    with safe_open(str(out16 / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((out16 / "config.json").read_text())["dtype"] == "bfloat16"

    tokens = torch.cat((ids, torch.randint(0, cfg.vocab_size, (1, 40))), dim=1)
    hf32 = load_hf(out32)
    assert max_diff(model, hf32, tokens) < 1e-4
    with torch.no_grad():  # the bf16 export, run in fp32: how far rounding the weights moves the distribution
        p = torch.log_softmax(model(tokens), -1)
        q = torch.log_softmax(load_hf(out16)(tokens).logits, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    print(f"bf16 export: mean KL(fp32 || bf16) = {kl:.2e} nats/token, max |dlogit| = {(p - q).abs().max():.2e}")
    assert kl < 1e-3


def test_sharded_export_through_the_cli(tmp_path, capsys):
    model = random_model(rope_style="interleaved", n_kv_heads=2)
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())
    anytrain(["export-hf", str(src), str(tmp_path / "hf"), "--dtype", "fp32", "--max-shard-size", "150KB"])
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert max_diff(model, load_hf(tmp_path / "hf"), torch.randint(0, 512, (2, 32))) < 1e-4
    anytrain(["export-hf", str(src), str(tmp_path / "hf"), "--force"])  # replaces the shards with one bf16 file
    assert sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors")) == ["model.safetensors"]
    # and an import reads the shards back
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    _, state, _ = ckpt.load_model_state(back)
    w2 = model.state_dict()["layers.1.feed_forward.w2.weight"]
    assert torch.equal(state["layers.1.feed_forward.w2.weight"], w2.bfloat16().float())


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    import trainer.interop.huggingface

    model = random_model()
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer.interop.huggingface, "_write_weights", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_hf(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    model = random_model()
    src = ckpt.write_model_checkpoint(tmp_path / "ck", model.cfg, model.state_dict())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases = [
        (["export-hf", str(tmp_path / "nope"), str(tmp_path / "o1")], "no complete checkpoint"),
        (["export-hf", str(src), str(tmp_path / "busy")], "--force"),
        (["import-hf", str(tmp_path / "gpt2"), str(tmp_path / "o2")], "model_type"),
        (["import-hf", str(tmp_path / "nope"), str(tmp_path / "o3")], "no config.json"),
        (["consolidate", str(tmp_path / "nope"), str(tmp_path / "o4.safetensors")], "no complete checkpoint"),
    ]
    broken = ckpt.write_model_checkpoint(tmp_path / "ck2", model.cfg, model.state_dict())
    (broken / ckpt.COMPLETE).unlink()
    cases.append((["export-hf", str(broken), str(tmp_path / "o5")], "COMPLETE"))
    for argv, words in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            anytrain(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, argv
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp directory left behind


@pytest.mark.parametrize("dtype, tie", [(torch.float32, False), (torch.bfloat16, True)], ids=["fp32", "bf16-tied"])
def test_hf_to_anytrain_to_hf_is_bit_identical(tmp_path, dtype, tie):
    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, max_position_embeddings=128, rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
    )  # fmt: skip
    original = LlamaForCausalLM(config).to(dtype).eval()
    original.save_pretrained(tmp_path / "a")
    ck = import_hf(tmp_path / "a", tmp_path / "ck")
    cfg, state, _ = ckpt.load_model_state(ck)
    assert cfg.rope_style == "half" and cfg.tie_embeddings == tie and cfg.rope_theta == 50000.0
    model = build_model(cfg).eval()
    model.load_state_dict(state)
    assert max_diff(model, original.float(), torch.randint(0, 512, (2, 32))) < 1e-4  # import keeps the function

    export_hf(ck, tmp_path / "b", dtype={torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype])
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ca, cb = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert {k: cb.get(k) for k in ca} == ca


def test_imported_checkpoint_trains_from_the_imported_weights(compose, tok_cache, tmp_path):
    torch.manual_seed(2)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.2,
    )  # fmt: skip  # a large init: far from both ln(vocab) and anytrain's own init
    original = LlamaForCausalLM(config).eval()
    original.save_pretrained(tmp_path / "hf")
    ck = import_hf(tmp_path / "hf", tmp_path / "ck")
    overrides = [*TINY, tok_cache, "trainer.max_steps=2", "schedule.warmup_steps=1", f"checkpoint.load={ck}"]
    cfg = to_train_config(compose(*overrides))
    fit(cfg, tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val0 = next(r["val_loss"] for r in rows if r.get("step") == 0 and "val_loss" in r)

    run = build_run(cfg, tmp_path / "probe", env.Ranks(), torch.device("cpu"))  # the same held-out batches
    with torch.no_grad():
        hf_loss = torch.stack([_next_token_ce(original, b) for b in run.val_batches]).mean().item()
    assert run.val_batches  # the held-out set is not empty
    assert val0 == pytest.approx(hf_loss, abs=1e-4)
    assert abs(val0 - math.log(512)) > 0.5
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


def _next_token_ce(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def test_consolidate_writes_anytrain_names_and_metadata(trained, tmp_path):
    out = tmp_path / "model.safetensors"
    anytrain(["consolidate", str(trained), str(out)])
    cfg, state, _ = ckpt.load_model_state(trained)
    tensors = load_file(out)
    assert tensors.keys() == state.keys() and all(t.dtype == torch.float32 for t in tensors.values())
    build_model(cfg).load_state_dict(tensors)  # strict: the names are anytrain's
    header = read_consolidated_metadata(out)
    assert header["step"] == "3" and header["rope_style"] == "interleaved"
    assert json.loads(header["model_config"])["dim"] == 64


LM_EVAL_TASK = """task: anytrain_tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
should_decontaminate: false
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


def test_lm_eval_perplexity_on_an_export(trained, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval", reason="lm_eval is not installed (pip install lm_eval==0.4.13)")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = export_hf(trained, tmp_path / "hf", dtype="fp32")
    docs = [
        "First Citizen: Before we proceed any further, hear me speak.",
        "All: Speak, speak.",
        "First Citizen: You are all resolved rather to die than to famish?",
    ]
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "data.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (task_dir / "tiny_ppl.yaml").write_text(LM_EVAL_TASK.format(data=task_dir / "data.jsonl"))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},dtype=float32",
        tasks=["anytrain_tiny_ppl"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        device="cpu",
        batch_size=1,
        bootstrap_iters=0,
    )
    metrics = results["results"]["anytrain_tiny_ppl"]
    print("lm_eval:", {k: v for k, v in metrics.items() if "perplexity" in k or "bits" in k})
    assert math.isfinite(metrics["word_perplexity,none"]) and metrics["word_perplexity,none"] > 1
