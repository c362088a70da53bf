"""Packer: fixed windows, EOS between documents, nothing lost or repeated, resumable leftovers."""

import random

import pytest

from data.packing import Packer

EOS = 0


def _docs(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 100) for _ in range(rng.randrange(1, 30))] for _ in range(n)]


def _drain(packer: Packer) -> list[list[int]]:
    out = []
    while (w := packer.pop()) is not None:
        out.append(w)
    return out


def test_windows_cover_the_concatenation_exactly():
    docs = _docs(200)
    packer = Packer(window=17, eos_id=EOS)
    windows = []
    for d in docs:
        packer.push(d)
        windows += _drain(packer)
    stream = [t for d in docs for t in d + [EOS]]
    assert all(len(w) == 17 for w in windows)
    flat = [t for w in windows for t in w]
    cut = len(stream) // 17 * 17
    assert flat == stream[:cut]
    assert len(packer) == len(stream) - cut
    assert packer.state_dict()["buffer"] == stream[cut:]


def test_eos_sits_exactly_between_documents():
    docs = [[1, 2, 3], [4, 5], [6]]
    packer = Packer(window=3, eos_id=EOS)
    for d in docs:
        packer.push(d)
    assert _drain(packer) == [[1, 2, 3], [EOS, 4, 5], [EOS, 6, EOS]]
    assert packer.pop() is None and len(packer) == 0


def test_state_roundtrip_continues_identically():
    docs = _docs(50, seed=1)
    a = Packer(window=8, eos_id=EOS)
    for d in docs[:20]:
        a.push(d)
    first = _drain(a)
    b = Packer(window=8, eos_id=EOS)
    b.load_state_dict(a.state_dict())
    for p in (a, b):
        for d in docs[20:]:
            p.push(d)
    assert first and _drain(a) == _drain(b)


def test_state_from_other_window_is_rejected():
    a = Packer(window=8, eos_id=EOS)
    with pytest.raises(ValueError, match="seq_len"):
        Packer(window=9, eos_id=EOS).load_state_dict(a.state_dict())
