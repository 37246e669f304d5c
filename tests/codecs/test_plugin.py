"""Third-party codecs found through the ``gradstore.codecs`` entry points.

The plug-in is a real distribution on sys.path (a module plus a *.dist-info
with entry_points.txt), so importlib.metadata finds it as it would a
pip-installed package.
"""
from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest

from gradstore.codecs import available_codecs, get_codec, registry
from gradstore.codecs.testing import check_codec
from gradstore.errors import CodecError

# the plug-in also ships a 'zstd' that must be ignored; one test checks the warning
pytestmark = pytest.mark.filterwarnings("ignore:ignoring plug-in codec")

PLUGIN = '''
import numpy as np
from gradstore.codecs import Codec, Encoded
from gradstore.codecs.codec import Param, as_bytes, element_count, integer
from gradstore.errors import CodecError


class XorCodec(Codec):
    """Bytes xor-ed with a key, behind a 4-byte length: a toy, lossless."""

    codec_id = "xor"
    lossless = True
    PARAMS = {"key": Param(90, integer(0, 255), "an integer 0..255")}

    def encode(self, array):
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8) ^ np.uint8(self.params["key"])
        payload = len(raw).to_bytes(4, "little") + raw.tobytes()
        return Encoded(payload, 8 * len(payload), array.size, None, {})

    def decode(self, payload, dtype, shape):
        data = np.frombuffer(as_bytes(payload), dtype=np.uint8)
        size = element_count(shape) * np.dtype(dtype).itemsize
        if len(data) != size + 4 or int.from_bytes(data[:4].tobytes(), "little") != size:
            raise CodecError("xor payload has the wrong length")
        out = data[4:] ^ np.uint8(self.params["key"])
        return out.view(dtype).reshape(shape)


class Shadow(XorCodec):
    codec_id = "zstd"


class Misnamed(XorCodec):
    codec_id = "something-else"
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A distribution 'gs-xor' with three entry points, put on sys.path."""
    (tmp_path / "gs_xor_plugin.py").write_text(PLUGIN)
    info = tmp_path / "gs_xor-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gs-xor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [gradstore.codecs]
        xor = gs_xor_plugin:XorCodec
        zstd = gs_xor_plugin:Shadow
        misnamed = gs_xor_plugin:Misnamed
        broken = gs_xor_plugin_missing:Nothing
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_warned", set())
    yield tmp_path


def test_plugin_is_listed_and_usable(plugin_dir):
    with pytest.warns(UserWarning, match="ignoring plug-in codec 'zstd'"):
        names = available_codecs()
    assert {"xor", "misnamed", "broken", "eg", "zstd"} <= set(names)
    codec = get_codec("xor:key=7")
    assert type(codec).__module__ == "gs_xor_plugin"
    assert codec.spec == "xor:key=7"
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(codec.decode(codec.encode(x).payload, x.dtype, x.shape), x)


def test_module_of_finds_a_plugin_without_importing_it(plugin_dir, monkeypatch):
    """The report starts its workers' server importing this module before it loads the codec."""
    monkeypatch.delitem(sys.modules, "gs_xor_plugin", raising=False)   # imported by other tests
    assert registry.module_of("xor:key=7") == "gs_xor_plugin"
    assert "gs_xor_plugin" not in sys.modules
    assert registry.module_of("broken") == "gs_xor_plugin_missing"
    assert registry.module_of("eg:k=0") == "gradstore.codecs.eg"
    assert registry.module_of("nosuchcodec") is None and registry.module_of("bad spec!") is None


def test_plugin_passes_the_shared_codec_checks(plugin_dir):
    check_codec(get_codec("xor"))


def test_plugin_parameters_are_validated(plugin_dir):
    with pytest.raises(CodecError, match="key accepts an integer 0..255"):
        get_codec("xor:key=300")


def test_builtin_wins_over_a_plugin_of_the_same_id(plugin_dir):
    with pytest.warns(UserWarning, match="a built-in codec has that id"):
        available_codecs()
    available_codecs()  # warned once only
    assert type(get_codec("zstd")).__module__ == "gradstore.codecs.zstd"


def test_broken_plugins_give_clear_errors(plugin_dir):
    with pytest.raises(CodecError, match="codec 'broken': cannot load gs_xor_plugin_missing:Nothing"):
        get_codec("broken")
    with pytest.raises(CodecError, match="declares codec_id 'something-else'"):
        get_codec("misnamed")


def test_plugin_gone_when_not_installed():
    assert "xor" not in available_codecs()
