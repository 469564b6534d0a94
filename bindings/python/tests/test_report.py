"""Store.diff and tpde.report: against numpy on the bundled run
(examples/data/tiny/weights), and the HTML report in a headless browser."""

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import tpde

WEIGHTS = Path(__file__).resolve().parents[3] / "examples" / "data" / "tiny" / "weights"


def read_safetensors(path):
    """name -> numpy array, read with numpy alone."""
    b = Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + lo:8 + n + hi], dtypes[t["dtype"]]).reshape(t["shape"])
    return out


@pytest.fixture
def run(tmp_path):
    store = tpde.Store(tmp_path / "run")
    for e in range(4):
        store.add(WEIGHTS / f"epoch-0{e}.safetensors")
    return store


def test_a_step_against_itself(run):
    d = run.diff(2, 2)
    assert len(d) == 28
    for t in d:
        assert t.kind == "compared"
        assert (t.changed, t.changed_fraction, t.max_abs, t.rms, t.rel) == (0, 0.0, 0.0, 0.0, 0.0)


def test_next_step_matches_numpy(run):
    a = read_safetensors(WEIGHTS / "epoch-01.safetensors")
    b = read_safetensors(WEIGHTS / "epoch-02.safetensors")
    d = run.diff(1, 2)
    assert {t.name for t in d} == set(a)
    rels = [t.rel for t in d]
    assert rels == sorted(rels, reverse=True)
    assert any(t.changed_from_store for t in d)
    for t in d:
        x, y = a[t.name].astype(np.float64), b[t.name].astype(np.float64)
        changed = int(np.count_nonzero(a[t.name].view(np.uint32) != b[t.name].view(np.uint32)))
        assert t.elements == x.size and t.changed == changed, t
        assert t.changed_fraction == changed / x.size
        diff = y - x
        assert t.max_abs == float(np.abs(diff).max()), t
        assert t.rms == pytest.approx(float(np.sqrt(np.mean(diff ** 2))), rel=1e-12)
        assert t.rel == pytest.approx(float(np.linalg.norm(diff) / np.linalg.norm(x)), rel=1e-12)
        assert t.dtype == "F32" and t.shape == x.shape
    assert [t.name for t in run.diff(1, 2, sort="name")] == sorted(a)
    with pytest.raises(tpde.TpdeError, match="sort"):
        run.diff(1, 2, sort="size")
    with pytest.raises(tpde.TpdeError, match="no step 7"):
        run.diff(1, 7)


def test_saved_steps(store):
    w = np.arange(1000, dtype=np.float32)
    store.save(1, {"model": {"w": w, "n": np.array([1, 2, 3])}, "lr": 0.1})
    w2 = w.copy()
    w2[:10] += 1
    store.save(2, {"model": {"w": w2, "n": np.array([1, 2, 4]), "new": np.zeros(2)}, "lr": 0.1})
    d = {t.name: t for t in store.diff(1, 2)}
    assert d["model/w"].changed == 10 and d["model/w"].max_abs == 1.0
    assert d["model/w"].rel == pytest.approx(np.sqrt(10 / float(np.sum(w.astype(np.float64) ** 2))))
    assert d["model/n"].changed == 1 and d["model/n"].rel is None
    assert d["model/new"].kind == "added"


def test_report_files(run, tmp_path):
    out = tmp_path / "report.html"
    data = tpde.report(run, out, csv=tmp_path / "r.csv", json=tmp_path / "r.json")
    assert [s["step"] for s in data["steps"]] == [0, 1, 2, 3]
    assert data["groups"] == ["encoder.layers.0", "encoder.layers.1", "head", "pos_emb", "tok_emb"]
    assert json.loads((tmp_path / "r.json").read_text()) == data
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 4 + 3 * 5
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    with pytest.raises(tpde.TpdeError, match="exists"):
        tpde.report(run, out)
    tpde.report(run.path, out, overwrite=True)
    with pytest.raises(tpde.TpdeError, match="say where"):
        tpde.report(run)


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("no chromium on PATH, and CI is set: test.sh installs it "
                    "(apt-get install -y chromium)")
    pytest.skip("no chromium on PATH (apt-get install -y chromium; test.sh installs it)")


def png_pixels(data):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, ul = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + left) & 255
            elif f == 2:
                line[i] = (line[i] + up) & 255
            elif f == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif f == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, bpp


def run_browser(chrome, args, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, timeout=120, env=env, check=True)


def test_report_in_a_browser(run, tmp_path):
    chrome = browser()
    out = tmp_path / "report.html"
    tpde.report(run, out)
    shot = tmp_path / "shot.png"
    run_browser(chrome, [f"--screenshot={shot}", "--window-size=1200,900", out.as_uri()], tmp_path)
    w, h, rows, bpp = png_pixels(shot.read_bytes())
    assert (w, h) == (1200, 900)
    colours = {row[i:i + 3] for row in rows[::7] for i in range(0, len(row), bpp * 7)}
    assert len(colours) > 20, "the screenshot is (nearly) one colour"
    if os.environ.get("TPDE_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["TPDE_REPORT_SCREENSHOT"])

    dom = run_browser(chrome, ["--dump-dom", out.as_uri()], tmp_path).stdout.decode()
    # The table's rows and the heat maps' cells are made by the page's script.
    assert dom.count('<tr class="step ') == 4
    assert dom.count('class="step keyframe"') == 1
    for metric in ("changed", "rel"):
        assert f'id="heatmap-svg-{metric}"' in dom
    assert dom.count('class="cell"') == 2 * 5 * 3
    assert dom.count('class="legend"') == 2
    assert "encoder.layers.1" in dom and "epoch-03.safetensors" in dom
