"""The store as a read-only mapping (items, values, get, Mapping), verified reads,
and clear errors for values that cannot be stored."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest

import gradstore

KEYS = [f"R_{r}_E_0_S_{s}_B_0/m" for r in range(2) for s in (0, 1, 2, 10)] + ["plain"]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "api.gs"
    with gradstore.open(path, "w") as gs:
        for i, k in enumerate(reversed(KEYS)):  # written out of order
            gs.write(k, np.full(5, i, np.float32))
    gs = gradstore.open(path)
    yield gs
    gs.close()


def _same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_store_is_a_mapping(store):
    assert isinstance(store, Mapping)
    assert not issubclass(gradstore.Store, dict)
    assert set(dict(store)) == set(KEYS)
    assert all(_same(v, store[k]) for k, v in dict(store).items())


def test_get_has_dict_semantics(store):
    assert _same(store.get("plain"), store["plain"])
    assert store.get("R_9_E_0_S_0_B_0/m") is None
    sentinel = object()
    assert store.get("nope", sentinel) is sentinel
    assert store.get(3, "d") == "d" and store.get(None) is None
    with pytest.raises(KeyError):
        store["nope"]


def test_items_and_values_follow_the_keys_and_their_filters(store):
    items = store.items()
    assert isinstance(items, Iterator) and not isinstance(items, list)
    pairs = list(items)
    assert [k for k, _ in pairs] == store.keys()
    assert all(_same(v, store[k]) for k, v in pairs)
    assert all(_same(v, store[k]) for k, v in zip(store.keys(), store.values()))
    chosen = store.keys(rank=1, step=range(0, 3))
    assert chosen == [f"R_1_E_0_S_{s}_B_0/m" for s in (0, 1, 2)]     # natural order: 2 before 10
    assert [k for k, _ in store.items(rank=1, step=range(0, 3))] == chosen
    assert [v[0] for v in store.values(rank=1, step=range(0, 3))] == [store[k][0] for k in chosen]
    with pytest.raises(TypeError, match="rank="):
        store.items(rank="x")     # filters are checked at the call, not at the first next()


def test_items_are_views_made_one_at_a_time(store):
    pairs = store.items()
    first_key, first = next(pairs)
    assert not first.flags.writeable and not first.flags.owndata   # a view of the map
    store.close()
    with pytest.raises(gradstore.GradstoreError, match="closed"):
        next(pairs)


def test_a_closed_store_refuses_lookups(store):
    store.close()
    for call in (lambda: store.get("plain"), lambda: "plain" in store, lambda: store.read("plain")):
        with pytest.raises(gradstore.GradstoreError, match="closed"):
            call()


def test_read_verifies_and_get_does_not(tmp_path):
    path = tmp_path / "v.gs"
    with gradstore.open(path, "w") as gs:
        e = gs.write("R_0_E_0_S_0_B_0/w", np.arange(100, dtype=np.float32))
        gs.write("R_0_E_0_S_0_B_0/ok", np.ones(3, np.float32))
    with gradstore.open(path) as gs:
        assert _same(gs.read("R_0_E_0_S_0_B_0/w", verify=True), np.arange(100, dtype=np.float32))
        with pytest.raises(KeyError):
            gs.read("missing", verify=True)
    with open(path / e.segment, "r+b") as f:
        f.seek(e.payload_offset + 17)
        f.write(b"\xff")
    with gradstore.open(path) as gs:
        with pytest.raises(gradstore.ChecksumError, match="R_0_E_0_S_0_B_0/w") as err:
            gs.read("R_0_E_0_S_0_B_0/w", verify=True)
        assert err.value.key == "R_0_E_0_S_0_B_0/w" and err.value.offset == e.offset
        with pytest.raises(gradstore.ChecksumError):
            gs.read("R_0_E_0_S_0_B_0/w")                              # verifying is the default
        damaged = gs.get("R_0_E_0_S_0_B_0/w")                         # get is store[key]: no check
        assert _same(damaged, gs["R_0_E_0_S_0_B_0/w"])
        assert _same(gs.read("R_0_E_0_S_0_B_0/w", verify=False), damaged)
        assert _same(gs.read("R_0_E_0_S_0_B_0/ok", verify=True), np.ones(3, np.float32))
    with pytest.raises(TypeError):
        gradstore.open(path).get("R_0_E_0_S_0_B_0/w", verify=True)    # verification is read()'s job


# -- values that cannot be stored ----------------------------------------------------

def _unstorable_tensors():
    torch = pytest.importorskip("torch")
    import warnings
    with warnings.catch_warnings():   # beta / deprecated layouts warn when made
        warnings.simplefilter("ignore")
        return {
            "sparse_coo": (torch.eye(3).to_sparse(), "sparse"),
            "sparse_csr": (torch.eye(3).to_sparse_csr(), "sparse"),
            "meta": (torch.empty(4, device="meta"), "meta"),
            "nested": (torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), "nested"),
            "quantized": (torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "quantized"),
            "complex": (torch.ones(3, dtype=torch.complex64), "unsupported dtype"),
            "float8": (torch.ones(3).to(torch.float8_e4m3fn), "unsupported dtype"),
        }


@pytest.mark.parametrize("case", ["sparse_coo", "sparse_csr", "meta", "nested", "quantized",
                                  "complex", "float8"])
def test_unstorable_tensors_name_the_key_and_write_nothing(tmp_path, case):
    value, reason = _unstorable_tensors()[case]
    torch = pytest.importorskip("torch")
    with gradstore.open(tmp_path / "bad.gs", "w") as gs:
        with pytest.raises(ValueError) as err:
            gs.write(f"R_0_E_0_S_0_B_0/{case}", value)
        message = str(err.value)
        assert f"R_0_E_0_S_0_B_0/{case}" in message and reason in message and "\n" not in message
        bucket = {"good": torch.ones(3), case: value, "after": torch.zeros(2)}
        with pytest.raises(ValueError, match=f"R_0_E_0_S_0_B_1/{case}: .*{reason}"):
            gs.write_bucket("R_0_E_0_S_0_B_1", bucket)
        assert len(gs) == 0 and gs.keys() == []


def test_bad_numpy_values_keep_their_errors(tmp_path):
    """ValueError and TypeError are what the store raised for bad values before torch
    layouts were checked; stay with them (numpy dtypes, non-arrays)."""
    with gradstore.open(tmp_path / "bad.gs", "w") as gs:
        with pytest.raises(ValueError, match="k1: unsupported dtype complex64"):
            gs.write("k1", np.ones(2, np.complex64))
        with pytest.raises(TypeError, match="k2: expected a numpy array or torch tensor"):
            gs.write("k2", [1.0])


def test_negative_view_tensors_are_stored_resolved(tmp_path):
    torch = pytest.importorskip("torch")
    neg = torch.arange(4.0)._neg_view()
    assert neg.is_neg()
    with gradstore.open(tmp_path / "n.gs", "w") as gs:
        gs.write("n", neg)
        assert _same(gs.read("n", verify=True), -np.arange(4.0, dtype=np.float32))
