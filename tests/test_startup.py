"""ml_dtypes (about half a second to import) is loaded only when bfloat16 is needed."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "s.gs")],
                          capture_output=True, text=True, timeout=300)


def test_an_fp32_store_never_imports_ml_dtypes(tmp_path):
    proc = run("""
        import sys
        import numpy as np
        import gradstore
        from gradstore import report
        path = sys.argv[1]
        with gradstore.open(path, "w") as gs:
            gs.write("R_0_E_0_S_0_B_0/w", np.linspace(-1, 1, 1000, dtype=np.float32))
            gs.write("R_0_E_0_S_0_B_0/i", np.arange(7, dtype=np.int64))
        with gradstore.open(path) as gs:
            assert gs.verify() == []
            assert gs["R_0_E_0_S_0_B_0/w"].dtype == np.float32
        rep = report.run(path, ["eg:k=0,scale=1e6", "fpx"], results=False, progress=False)
        assert rep.rows
        assert "ml_dtypes" not in sys.modules, "imported for an fp32 store"
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_bfloat16_loads_it_when_first_needed(tmp_path):
    proc = run("""
        import sys
        import numpy as np
        import gradstore
        path = sys.argv[1]
        import ml_dtypes          # the user's own bf16 array: gradstore has not loaded bf16 yet
        x = np.linspace(-3, 3, 101).astype(ml_dtypes.bfloat16)
        with gradstore.open(path, "w") as gs:
            gs.write("R_0_E_0_S_0_B_0/w", x)
            gs.encode("fpx")
        with gradstore.open(path) as gs:
            y = gs["R_0_E_0_S_0_B_0/w"]
            assert y.dtype == ml_dtypes.bfloat16 and y.tobytes() == x.tobytes()
            assert gs.entry("R_0_E_0_S_0_B_0/w").dtype == "bfloat16"
            assert gs.variant("R_0_E_0_S_0_B_0/w", "fpx", verify=True).tobytes() == x.tobytes()
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_reading_a_bf16_store_loads_it(tmp_path):
    import ml_dtypes
    import numpy as np

    import gradstore
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", np.ones(5, dtype=ml_dtypes.bfloat16))
    proc = run("""
        import sys
        import gradstore
        with gradstore.open(sys.argv[1]) as gs:
            y = gs["R_0_E_0_S_0_B_0/w"]
        assert "ml_dtypes" in sys.modules
        print(y.dtype, y.astype("float32").tolist())
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "bfloat16 [1.0, 1.0, 1.0, 1.0, 1.0]\n"


def test_opening_and_listing_a_bf16_store_does_not_load_it(tmp_path):
    """A closed store is opened from its snapshot: its checks, listing and entries need
    dtype names only; the first tensor read loads ml_dtypes, as it must."""
    import ml_dtypes
    import numpy as np

    import gradstore
    from gradstore.namespace import CHECKPOINT_ON_CLOSE
    with gradstore.open(tmp_path / "s.gs", "w") as gs:
        gs.write("R_0_E_0_S_0_B_0/w", np.ones((2, 3), dtype=ml_dtypes.bfloat16))
        gs.write("R_0_E_0_S_0_B_0/b", np.ones(4, dtype=np.float32))
        for i in range(CHECKPOINT_ON_CLOSE):     # enough for the close to write a snapshot
            gs.write(f"R_0_E_0_S_1_B_0/m{i}", np.full(1, i, dtype=ml_dtypes.bfloat16))
    assert (tmp_path / "s.gs" / "main" / "index.snap").exists()
    proc = run("""
        import sys
        import gradstore
        with gradstore.open(sys.argv[1]) as gs:
            keys = gs.keys()[:2]
            e = gs.entry("R_0_E_0_S_0_B_0/w")
            assert gs.source_entry("R_0_E_0_S_0_B_0/w").dtype == "bfloat16"
            assert gs["R_0_E_0_S_0_B_0/b"].sum() == 4
            before = "ml_dtypes" in sys.modules
            y = gs["R_0_E_0_S_0_B_0/w"]
        print(keys, e.dtype, e.shape, before, y.dtype, "ml_dtypes" in sys.modules)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("['R_0_E_0_S_0_B_0/b', 'R_0_E_0_S_0_B_0/w'] bfloat16 (2, 3) False "
                           "bfloat16 True\n")
