"""The chunked loss under FSDP on two ranks: the same curve as the plain loss."""

from .test_multiprocess import PARITY, launch, losses, train_under


def test_fsdp_chunked_loss_matches_the_plain_loss(tmp_path, tok_cache):
    curves = []
    for chunk in (0, 50):  # 4 x 64 tokens a micro-batch: six chunks, the last one short
        run = tmp_path / f"chunk{chunk}"
        overrides = [*PARITY, tok_cache, "parallel=fsdp", f"model.loss_chunk={chunk}", f"trainer.run_dir={run}"]
        launch(train_under(2), overrides, tmp_path)
        curves.append(losses(run))
    assert len(curves[0]) == len(curves[1]) > 0
    assert max(abs(a - b) for a, b in zip(*curves)) < 1e-5, curves
