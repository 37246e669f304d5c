"""GradientCapture in real DDP training: 2 ranks, gloo over 127.0.0.1, CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradstore  # noqa: E402
from gradstore.torch.ddp import spawn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import capture_workers as cw  # noqa: E402

WORLD = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    spawn(cw.scenarios, WORLD, str(root), threads=1, timeout=60)
    records = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return root, records


def stored(path, **filters) -> dict[str, np.ndarray]:
    with gradstore.open(path) as gs:
        assert gs.verify() == []
        return {k: np.array(gs[k]) for k in gs.keys(**filters)}


def test_every_captured_tensor_is_the_local_gradient(run):
    root, records = run
    got = stored(root / "plain.gs")
    expected = {}
    for rank, rec in enumerate(records):
        for step, grads in enumerate(rec["plain"]["ref"]):
            for name, g in grads.items():
                expected[(rank, step, name)] = g.numpy()
    seen = set()
    for key, arr in got.items():
        k = gradstore.Key.parse(key)
        np.testing.assert_array_equal(arr, expected[(k.rank, k.step, k.module)], err_msg=key)
        assert (k.rank, k.step, k.module) not in seen, f"{key}: parameter stored twice in a step"
        seen.add((k.rank, k.step, k.module))
    assert seen == set(expected), "every parameter of every rank and step is stored once"
    assert {gradstore.Key.parse(k).epoch for k in got} == {0}


def test_buckets_follow_the_rebuild_after_step_0(run):
    root, records = run
    with gradstore.open(root / "plain.gs") as gs:
        for rank, rec in enumerate(records):
            # what the hook saw, call by call: step s owns the calls up to its is_last()
            per_step = {}
            calls = rec["plain"]["seen"]
            nb = [len(gs.buckets(rank=rank, step=s)) for s in range(cw.STEPS)]
            assert sum(nb) == len(calls)
            i = 0
            for s, n in enumerate(nb):
                per_step[s] = calls[i:i + n]
                i += n
            layouts = [[(i, sorted(g)) for i, g in per_step[s]] for s in range(cw.STEPS)]
            assert layouts[0] != layouts[1], "the test model must have its buckets rebuilt after step 0"
            assert layouts[1] == layouts[2] == layouts[3]
            for s, step_calls in per_step.items():
                for index, grads in step_calls:
                    bucket = gs.bucket(f"R_{rank}_E_0_S_{s}_B_{index}")
                    assert sorted(bucket) == sorted(grads)
                    for name, g in grads.items():
                        np.testing.assert_array_equal(bucket[name], g.numpy())


def test_after_allreduce_with_filters(run):
    root, records = run
    got = stored(root / "after.gs")
    keys = [gradstore.Key.parse(k) for k in got]
    assert {k.rank for k in keys} == {1}, "ranks=[1]: only rank 1 captures"
    assert {k.step for k in keys} == {0, 2}, "every=2"
    assert {k.module for k in keys} == {"up.weight", "up.bias", "norm.weight"}
    after = records[1]["after"]["after"]
    for key, arr in got.items():
        k = gradstore.Key.parse(key)
        # the averaged gradient DDP wrote into .grad
        np.testing.assert_array_equal(arr, after[k.step][k.module].numpy(), err_msg=key)
    assert not (root / "after.gs" / "r0").exists() or not stored(root / "after.gs", rank=0)


def test_user_hook_result_is_unchanged(run):
    root, records = run
    for rec in records:
        assert rec["bf16"]["params"].keys() == rec["bf16_ref"]["params"].keys()
        for name, p in rec["bf16"]["params"].items():
            assert torch.equal(p, rec["bf16_ref"]["params"][name]), name
        for step in range(cw.STEPS):
            for name, g in rec["bf16"]["after"][step].items():
                assert torch.equal(g, rec["bf16_ref"]["after"][step][name])
    # and the capture still stored the local (uncompressed) gradients
    got = stored(root / "bf16.gs", rank=0, step=3)
    for key, arr in got.items():
        k = gradstore.Key.parse(key)
        np.testing.assert_array_equal(arr, records[0]["bf16"]["ref"][3][k.module].numpy())
    assert len(got) == len(records[0]["bf16"]["names"])


def test_exception_in_training_loses_nothing_captured(run):
    root, records = run
    for rank, rec in enumerate(records):
        fail = rec["fail"]
        assert fail["error"] == "training failed"
        stats = fail["stats"]
        assert stats["captured"] == stats["written"] > 0 and stats["dropped"] == 0
        got = stored(root / "fail.gs", rank=rank)
        assert len({gradstore.Key.parse(k).bucket_name for k in got}) == stats["captured"]
        # steps 0..2 ran their backward (the failure came after step 2's): all stored, exactly
        assert {gradstore.Key.parse(k).step for k in got} == {0, 1, 2}
        for key, arr in got.items():
            k = gradstore.Key.parse(key)
            np.testing.assert_array_equal(arr, fail["ref"][k.step][k.module].numpy())


def test_variants_only_capture(run):
    """raw=False: the codecs' variants of every gradient, and no tensor; fpx gives the
    gradient back bit for bit, eg within its quantization step."""
    from gradstore.codecs.registry import get_codec
    codec = get_codec("eg:k=auto,scale=1e6")
    root, records = run
    with gradstore.open(root / "encoded.gs") as gs:
        assert gs.verify() == []
        assert gs.keys() == []
        keys = gs.encoded_keys()
        expected = {(rank, step, name): g.numpy() for rank, rec in enumerate(records)
                    for step, grads in enumerate(rec["encoded"]["ref"]) for name, g in grads.items()}
        assert len(keys) == len(expected)
        for key in keys:
            k = gradstore.Key.parse(key)
            want = expected[(k.rank, k.step, k.module)]
            assert gs.variant(key, "fpx", verify=True).tobytes() == want.tobytes(), key
            eg = gs.variant(key, "eg:k=auto,scale=1e6", verify=True)
            again = codec.decode(codec.encode(want).payload, want.dtype, want.shape)
            assert eg.tobytes() == again.tobytes(), key   # what the codec makes of the gradient
            # off by at most half a quantization step, and float32's rounding of the result
            assert (np.abs(eg.astype(np.float64) - want) <= 0.5e-6 + np.spacing(np.abs(want))).all()
            with pytest.raises(KeyError, match="encoded variants only"):
                gs[key]
    for rec in records:
        assert rec["encoded"]["stats"]["not_encodable"] == 0
        assert rec["encoded"]["stats"]["tensors"] == len(keys) // WORLD


def test_tensors_and_their_variants_captured_together(run):
    """codecs with raw=True: each tensor, and its variants encoded from the host
    buffer (not read back), recorded as variants of that very tensor."""
    from gradstore.codecs.registry import get_codec
    codec, fpx = get_codec("eg:k=auto,scale=1e6"), get_codec("fpx")
    root, records = run
    got = stored(root / "variants.gs")
    expected = {(rank, step, name): g.numpy() for rank, rec in enumerate(records)
                for step, grads in enumerate(rec["variants"]["ref"]) for name, g in grads.items()}
    assert len(got) == len(expected)
    with gradstore.open(root / "variants.gs") as gs:
        for key, arr in got.items():
            k = gradstore.Key.parse(key)
            want = expected[(k.rank, k.step, k.module)]
            np.testing.assert_array_equal(arr, want, err_msg=key)
            assert gs.variant_specs(key) == sorted([codec.spec, fpx.spec])
            for spec in (codec.spec, fpx.spec):
                assert gs.variant_entry(key, spec).extra["src"] == gs.entry(key).checksum
            assert gs.variant(key, "fpx", verify=True).tobytes() == want.tobytes(), key
            again = codec.decode(codec.encode(want).payload, want.dtype, want.shape)
            assert gs.variant(key, codec.spec, verify=True).tobytes() == again.tobytes(), key
    for rec in records:
        assert rec["variants"]["stats"]["not_encodable"] == 0


def test_variants_next_to_tensors_need_a_gradstore_store():
    """Refused when made: the writer thread would fail on a store-like object."""
    from gradstore.torch import GradientCapture

    class Sink:
        def write_bucket(self, name, tensors):
            pass

    with pytest.raises(TypeError, match="needs a gradstore store .*not Sink"):
        GradientCapture(Sink(), rank=0, codecs=["fpx"])
    GradientCapture(Sink(), rank=0).close()   # tensors only: any object with write_bucket


@pytest.mark.parametrize("codecs", [None, ["raw"], ["raw", "fpx"]])
def test_variants_only_capture_needs_codecs_other_than_raw(tmp_path, codecs):
    """Refused when made, as Store.write_encoded would refuse them later, in the writer thread."""
    from gradstore.torch import GradientCapture
    with pytest.raises(ValueError, match="raw=False: .*at least one codec, and not 'raw'"):
        GradientCapture(tmp_path / "s.gs", rank=0, codecs=codecs, raw=False)
    assert not (tmp_path / "s.gs").exists()
