"""The form table that index rows point into: distinct forms never merge."""
import numpy as np
import pytest

import gradstore
from gradstore import dtypes, forms


def _columns(shapes, kinds=None, codes=None):
    n = len(shapes)
    kind = np.array(kinds or [1] * n, np.uint8)
    dtype = np.array(codes or [0] * n, np.uint8)
    ndim = np.array([len(s) for s in shapes], np.uint8)
    dims = np.array([d for s in shapes for d in s], np.uint64)
    return kind, dtype, ndim, dims


SHAPES = [(), (3,), (3,), (0,), (2, 3), (3, 2), (2, 3), (1, 1, 1), (), (3,), (2**40, 1)]


def test_rows_of_one_form_share_it_and_no_others_do():
    kind, dtype, ndim, dims = _columns(SHAPES, kinds=[1] * 10 + [2], codes=[0] * 9 + [2, 0])
    table, form_of = forms.Forms.of_rows(kind, dtype, ndim, dims)
    assert form_of.dtype == np.uint32 and len(form_of) == len(SHAPES)
    got = [table.built[f] or table.build(f) for f in form_of.tolist()]
    for i, (k, dt, shape, name) in enumerate(got):
        assert shape == SHAPES[i] and k == kind[i] and name == dtypes.NAMES[dtype[i]]
        assert dt is None or dt == dtypes.by_code(dtype[i])       # None: bfloat16 not loaded yet
        assert table.numpy_dtype(int(form_of[i])) == dtypes.by_code(dtype[i])
    key = [(int(kind[i]), int(dtype[i]), SHAPES[i]) for i in range(len(SHAPES))]
    for i in range(len(SHAPES)):
        for j in range(len(SHAPES)):
            assert (form_of[i] == form_of[j]) == (key[i] == key[j]), (i, j)
    assert len(table) == len(set(key))
    assert table.row_dims(form_of).tolist() == dims.tolist()


def test_a_hash_collision_is_caught_and_retried(monkeypatch):
    """With a mixer that collides every form on its first seeds, forms stay apart."""
    real, calls = forms._mix, []

    def weak(x):
        calls.append(1)
        return np.zeros_like(x) if len(calls) <= 6 else real(x)

    monkeypatch.setattr(forms, "_mix", weak)
    kind, dtype, ndim, dims = _columns(SHAPES)
    table, form_of = forms.Forms.of_rows(kind, dtype, ndim, dims)
    assert len(table) == len(set(SHAPES))
    assert [table.build(f)[2] for f in form_of.tolist()] == SHAPES


def test_forms_that_never_hash_apart_are_an_error_not_a_merge(monkeypatch):
    monkeypatch.setattr(forms, "_mix", np.zeros_like)
    with pytest.raises(ValueError, match="told apart"):
        forms.Forms.of_rows(*_columns(SHAPES))


def test_a_snapshot_of_many_forms_reads_every_shape(tmp_path):
    """Each key its own shape: the table is as long as the store, and right."""
    path = tmp_path / "shapes.gs"
    shapes = [(i % 7, i // 7 + 1) if i % 3 else (i,) for i in range(600)]
    with gradstore.open(path, "w") as gs:
        for i, s in enumerate(shapes):
            gs.write(f"k{i}", np.full(s, i, np.int16))
    gradstore.repair(path)  # the index comes from the snapshot
    with gradstore.open(path) as gs:
        assert gs._namespaces["main"].index._n == len(shapes)
        for i, s in enumerate(shapes):
            a = gs[f"k{i}"]
            assert a.shape == s and a.dtype == np.int16 and (a == i).all()
