"""Tests for data.py: image loading, the SR layout, prepare, download, CLI. Fast, offline, no shared data."""
import http.server
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
from data import DataError  # noqa: E402


def _pixels(seed, h, w):
    """A smooth random RGB picture (blurry blobs, like a photo more than like noise)."""
    g = np.random.default_rng(seed)
    small = Image.fromarray(g.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((w, h), Image.BICUBIC)


def _make_src(folder, n=4, sizes=((40, 30), (24, 24), (30, 50), (64, 64))):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        _pixels(i, h, w).save(os.path.join(folder, f'img{i}.png'))
    return str(folder)


def _png_bytes(img):
    b = io.BytesIO()
    img.save(b, 'PNG')
    return b.getvalue()


def _zip_folder(folder, zip_path, prefix=''):
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_STORED) as z:
        for d, _, files in os.walk(folder):
            for f in sorted(files):
                full = os.path.join(d, f)
                z.write(full, prefix + os.path.relpath(full, folder).replace(os.sep, '/'))
    return str(zip_path)


@pytest.fixture
def layout(tmp_path):
    """A prepared 8 -> 32 layout of 4 generated images; returns (src, dst)."""
    src = _make_src(tmp_path / 'src')
    dst = str(tmp_path / 'pairs')
    assert data.prepare(src, dst, 8, 32, progress=False) == 4
    return src, dst

# ----------------------------------------------------------------------------- round trips


def test_prepare_srpairs_round_trip(layout):
    src, dst = layout
    for d in ('hr_32', 'lr_8', 'sr_8_32'):
        assert sorted(os.listdir(os.path.join(dst, d))) == [f'img{i}.png' for i in range(4)]
    ds = data.SRPairs(dst, 8, 32)
    assert len(ds) == 4 and ds.names == [f'img{i}.png' for i in range(4)]
    images = data.ImageFolder(src, 32)
    for i in range(4):
        it = ds[i]
        assert it['name'] == f'img{i}.png'
        assert it['hr'].shape == (3, 32, 32) and it['sr'].shape == (3, 32, 32) and it['lr'].shape == (3, 8, 8)
        for k in ('hr', 'lr', 'sr'):
            assert it[k].dtype == torch.float32 and it[k].min() >= -1 and it[k].max() <= 1
        assert torch.equal(it['sr'], data.resize(it['lr'], 32))   # sr = bicubic up of lr
        assert torch.equal(it['lr'], data.resize(it['hr'], 8))    # lr = bicubic down of hr
        assert torch.equal(it['hr'], images[i]['image'])         # hr = centre crop + bicubic of the source
        assert it['hr'].std() > 0.05                              # real content, not a flat image


def test_centre_crop_keeps_the_middle(tmp_path):
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 255  # white centre square, black sides
    Image.fromarray(a).save(tmp_path / 'wide.png')
    x = data.ImageFolder(str(tmp_path), 10)[0]['image']
    assert x.shape == (3, 10, 10) and torch.all(x == 1.0)


def test_val_split_and_split_root(tmp_path):
    src = _make_src(tmp_path / 'src')
    dst = str(tmp_path / 'out')
    data.prepare(src, dst, 8, 32, val=1, progress=False)
    train, val = data.split_root(dst)
    assert (train, val) == (os.path.join(dst, 'train'), os.path.join(dst, 'val'))
    assert data.SRPairs(val, 8, 32).names == ['img0.png']
    assert data.SRPairs(train, 8, 32).names == ['img1.png', 'img2.png', 'img3.png']
    assert data.split_root(src) == (src, None)
    with pytest.raises(DataError, match='several hr_32'):
        data.SRPairs(dst, 8, 32)
    with pytest.raises(DataError, match='--val 4'):
        data.prepare(src, str(tmp_path / 'o2'), 8, 32, val=4, progress=False)



# ----------------------------------------------------------------------------- held-out images never in training


def test_prepare_into_a_non_empty_folder_needs_overwrite_which_clears_it(tmp_path, capsys):
    """Issue 30.3: --val 4 then --val 8 into one folder used to leave 00004-00007 in both train/ and val/."""
    src = _make_src(tmp_path / 'src', n=10)
    dst = str(tmp_path / 'out')
    data.prepare(src, dst, 8, 32, val=4, progress=False)
    _raises(lambda: data.prepare(src, dst, 8, 32, val=8, progress=False), dst, 'not empty', '--overwrite')
    assert data.SRPairs(os.path.join(dst, 'val'), 8, 32).names == [f'img{i}.png' for i in range(4)]  # untouched
    assert data.main(['prepare', src, dst, '--lr', '8', '--hr', '32', '--val', '8', '--quiet']) == 2
    assert 'not empty' in capsys.readouterr().err
    assert data.main(['prepare', src, dst, '--lr', '8', '--hr', '32', '--val', '8', '--quiet', '--overwrite']) == 0
    train, val = (data.SRPairs(os.path.join(dst, d), 8, 32).names for d in ('train', 'val'))
    assert val == [f'img{i}.png' for i in range(8)] and train == ['img8.png', 'img9.png']
    # --overwrite never deletes the images it reads
    _raises(lambda: data.prepare(src, str(tmp_path), 8, 32, progress=False, overwrite=True), 'holds the source')
    assert len(os.listdir(src)) == 10


def _copy_pair(frm, to, name, new_name):
    for d in ('hr_32', 'lr_8', 'sr_8_32'):
        shutil.copy(os.path.join(frm, d, name), os.path.join(to, d, new_name))


def test_a_training_set_sharing_images_with_its_held_out_set_is_refused(tmp_path, monkeypatch):
    import train
    src = _make_src(tmp_path / 'src', n=6)
    dst = str(tmp_path / 'out')
    data.prepare(src, dst, 8, 32, val=2, progress=False)
    tr, va = os.path.join(dst, 'train'), os.path.join(dst, 'val')

    def sets(*extra):
        a = train.get_args(['--task', 'sr8_32', '--model', 'tiny', '--out', str(tmp_path / 'run'), *extra])
        return train.datasets(a)
    assert [len(x) for x in sets('--data', dst)[:2]] == [4, 2]
    _copy_pair(tr, tr, 'img2.png', 'img1.png')  # a held-out name in train/ (other pixels: say, an older prepare)
    _raises(lambda: sets('--data', dst), os.path.join(tr, 'hr_32', 'img1.png'), 'held-out', 'shared names')
    for d in ('hr_32', 'lr_8', 'sr_8_32'):
        os.remove(os.path.join(tr, d, 'img1.png'))
    _copy_pair(va, tr, 'img0.png', 'zz.png')  # the same image under another name: found by its content
    _raises(lambda: sets('--data', dst), os.path.join(tr, 'hr_32', 'zz.png'), 'same content',
            os.path.join(va, 'hr_32', 'img0.png'))
    _raises(lambda: sets('--data', tr, '--val-data', va), 'zz.png', 'same content')  # any held-out source
    # a separate held-out set may reuse file names (two numbered data sets), never images
    for d in ('hr_32', 'lr_8', 'sr_8_32'):
        os.remove(os.path.join(tr, d, 'zz.png'))
    other = str(tmp_path / 'other')
    os.makedirs(tmp_path / 'osrc')
    _pixels(77, 32, 32).save(tmp_path / 'osrc' / 'img2.png')  # the name of a training image, another picture
    data.prepare(str(tmp_path / 'osrc'), other, 8, 32, progress=False)
    assert [len(x) for x in sets('--data', tr, '--val-data', other)[:2]] == [4, 1]
    # sr16_128's default held-out set, DREAM's faces, is checked too
    big = str(tmp_path / 'big')
    data.prepare(src, big, 16, 128, progress=False)
    monkeypatch.setattr(data, 'download', lambda name, *a, **k: big)
    a = train.get_args(['--task', 'sr16_128', '--model', 'tiny', '--data', big, '--out', str(tmp_path / 'r2')])
    _raises(lambda: train.datasets(a), 'same content')

def test_zip_nested_layout_and_workers(layout, tmp_path):
    src, dst = layout
    zpath = _zip_folder(dst, tmp_path / 'faces_8_32.zip', prefix='faces_8_32/')
    ds_dir, ds_zip = data.SRPairs(dst, 8, 32), data.SRPairs(zpath, 8, 32)
    assert ds_zip.names == ds_dir.names
    for k in ('hr', 'lr', 'sr'):
        assert torch.equal(ds_zip[2][k], ds_dir[2][k])
    ds2 = pickle.loads(pickle.dumps(ds_zip))  # after a read: the open zip handle must not be pickled
    assert torch.equal(ds2[1]['hr'], ds_dir[1]['hr'])
    loader = torch.utils.data.DataLoader(ds_zip, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [n for b in batches for n in b['name']] == ds_dir.names
    assert torch.equal(batches[1]['hr'][0], ds_dir[2]['hr'])
    # ImageFolder and list_images from a zip of the raw source images, and load_image of a member
    zsrc = _zip_folder(src, tmp_path / 'src.zip', prefix='photos/')
    imf = data.ImageFolder(zsrc, 16)
    assert len(imf) == 4 and imf[3]['name'] == 'photos/img3.png' and imf[3]['image'].shape == (3, 16, 16)
    files = data.list_images(zsrc)
    assert files[0] == os.path.join(zsrc, 'photos', 'img0.png')
    assert torch.equal(data.load_image(files[0]), data.load_image(os.path.join(src, 'img0.png')))


def test_missing_sr_folder_is_computed(layout):
    _, dst = layout
    ref = data.SRPairs(dst, 8, 32)[1]['sr']
    for f in os.listdir(os.path.join(dst, 'sr_8_32')):
        os.remove(os.path.join(dst, 'sr_8_32', f))
    os.rmdir(os.path.join(dst, 'sr_8_32'))
    ds = data.SRPairs(dst, 8, 32)
    assert not ds.has_sr and torch.equal(ds[1]['sr'], ref)


def test_save_load_grid_resize(tmp_path):
    x = data.load_image(_png_bytes(_pixels(7, 12, 20)))
    data.save_image(x, str(tmp_path / 'a' / 'x.png'))
    assert torch.equal(data.load_image(str(tmp_path / 'a' / 'x.png')), x)
    assert torch.equal(data.to_uint8(torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])),
                       torch.tensor([0, 0, 128, 255, 255, 255], dtype=torch.uint8))
    batch = torch.stack([x, -x, x * 0])
    data.save_grid(batch, str(tmp_path / 'g.png'), pad=2)  # 3 images -> 2 per row, 2 rows
    g = data.load_image(str(tmp_path / 'g.png'))
    assert g.shape == (3, 2 + 2 * 14, 2 + 2 * 22)
    assert torch.equal(data.to_uint8(g[:, 2:14, 24:44]), data.to_uint8(-x)) and torch.all(g[:, 0:2] == 1)
    data.save_grid([batch, batch], str(tmp_path / 'rows.png'), pad=0)  # one row per batch
    assert data.load_image(str(tmp_path / 'rows.png')).shape == (3, 24, 60)
    r = data.resize(batch, (6, 10))
    assert r.shape == (3, 3, 6, 10) and torch.equal(r[1], data.resize(-x, (6, 10)))

# ----------------------------------------------------------------------------- modes


def test_modes_load_as_rgb(tmp_path):
    g = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    x = data.load_image(_png_bytes(Image.fromarray(g, 'L')))
    assert x.shape == (3, 6, 8) and torch.equal(x[0], x[2])
    assert torch.allclose(data.to_uint8(x)[1], torch.from_numpy(g))
    # RGBA: composited on white
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 0, 40)
    rgba[0, :, 3] = 255   # opaque row -> the colour
    rgba[1, 0, 3] = 0     # transparent -> white
    rgba[1, 1, 3] = 128   # half -> blend
    rgba[1, 2, 3] = 255
    u = data.to_uint8(data.load_image(_png_bytes(Image.fromarray(rgba, 'RGBA'))))
    assert u[:, 0, 0].tolist() == [200, 0, 40] and u[:, 1, 0].tolist() == [255, 255, 255]
    assert [abs(a - b) <= 1 for a, b in zip(u[:, 1, 1].tolist(), [227, 127, 147])] == [True] * 3
    # palette, with and without transparency
    p = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), 'P')
    p.putpalette([10, 20, 30, 40, 50, 60, 250, 0, 0] + [0] * 759)
    u = data.to_uint8(data.load_image(_png_bytes(p)))
    assert u[:, 0, 1].tolist() == [40, 50, 60] and u[:, 1, 0].tolist() == [250, 0, 0]
    p.info['transparency'] = 2
    u = data.to_uint8(data.load_image(_png_bytes(p)))
    assert u[:, 1, 0].tolist() == [255, 255, 255] and u[:, 0, 0].tolist() == [10, 20, 30]
    # 16-bit grayscale: 65535 -> 255, 257 * v -> v, 32768 -> 128 (127.5 rounds up)
    a16 = np.array([[0, 65535, 257 * 100, 32768]], np.uint16)
    im16 = Image.fromarray(a16)
    assert im16.mode == 'I;16'
    u = data.to_uint8(data.load_image(_png_bytes(im16)))
    assert u[0, 0].tolist() == [0, 255, 100, 128] and torch.equal(u[0], u[2])
    # grayscale + alpha, and a JPEG
    la = Image.fromarray(np.dstack([np.full((2, 2), 50, np.uint8), np.array([[255, 0], [255, 255]], np.uint8)]), 'LA')
    u = data.to_uint8(data.load_image(_png_bytes(la)))
    assert u[:, 0, 0].tolist() == [50, 50, 50] and u[:, 0, 1].tolist() == [255, 255, 255]
    _pixels(3, 16, 16).save(tmp_path / 'a.jpg', quality=95)
    assert data.load_image(str(tmp_path / 'a.jpg')).shape == (3, 16, 16)

# ----------------------------------------------------------------------------- bad input


def _raises(fn, *needles):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('data: ')
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


def test_bad_files_name_the_file(tmp_path):
    good = _png_bytes(_pixels(1, 32, 32))
    trunc = tmp_path / 'trunc.png'
    trunc.write_bytes(good[:len(good) // 2])
    _raises(lambda: data.load_image(str(trunc)), trunc, 'truncated or corrupt')
    fake = tmp_path / 'fake.png'
    fake.write_bytes(b'this is not a picture\n' * 10)
    _raises(lambda: data.load_image(str(fake)), fake, 'not an image')
    _raises(lambda: data.load_image(str(tmp_path / 'nope.png')), 'nope.png', 'no such file')
    _raises(lambda: data.load_image(str(tmp_path)), tmp_path, 'directory')
    _raises(lambda: data.load_image(b'', name='empty-thing'), 'empty-thing')
    # a bad file met by prepare (default: fail; skip_bad: warn and go on) and by ImageFolder
    src = _make_src(tmp_path / 'src', n=3)
    (tmp_path / 'src' / 'img1.png').write_bytes(good[:100])
    _raises(lambda: data.prepare(src, str(tmp_path / 'o'), 8, 32, progress=False), 'img1.png')
    _raises(lambda: data.ImageFolder(src, 16)[1], os.path.join(src, 'img1.png'))
    assert data.prepare(src, str(tmp_path / 'o2'), 8, 32, progress=False, skip_bad=True) == 2
    assert data.SRPairs(str(tmp_path / 'o2'), 8, 32).names == ['img0.png', 'img2.png']


def test_bad_layouts(layout, tmp_path):
    _, dst = layout
    # wrong size in hr_: found when the item is loaded
    _pixels(0, 30, 30).save(os.path.join(dst, 'hr_32', 'img2.png'))
    ds = data.SRPairs(dst, 8, 32)
    assert ds[1]['hr'].shape == (3, 32, 32)  # the other items still load
    _raises(lambda: ds[2], os.path.join(dst, 'hr_32', 'img2.png'), 'expected 32x32, got 30x30')
    # unpaired name
    os.remove(os.path.join(dst, 'lr_8', 'img3.png'))
    _raises(lambda: data.SRPairs(dst, 8, 32), os.path.join(dst, 'hr_32', 'img3.png'), 'lr_8')
    # wrong resolutions asked for: says what is there
    _raises(lambda: data.SRPairs(dst, 16, 64), 'no hr_64', 'hr_32')
    # empty folder, empty hr folder, missing path
    empty = tmp_path / 'empty'
    (empty / 'hr_32').mkdir(parents=True)
    (empty / 'lr_8').mkdir()
    _raises(lambda: data.SRPairs(str(empty), 8, 32), os.path.join(str(empty), 'hr_32'), 'no images')
    _raises(lambda: data.list_images(str(empty)), empty, 'no images')
    _raises(lambda: data.ImageFolder(str(empty), 8), empty, 'no images')
    _raises(lambda: data.prepare(str(empty), str(tmp_path / 'x'), 8, 32, progress=False), empty)
    _raises(lambda: data.SRPairs(str(tmp_path / 'missing'), 8, 32), 'missing', 'no such file')
    _raises(lambda: data.ImageFolder(str(tmp_path / 'missing.zip'), 8), 'missing.zip')
    _raises(lambda: data.SRPairs(dst, 32, 32), 'lr < hr')


def test_bad_zips(tmp_path):
    notzip = tmp_path / 'bad.zip'
    notzip.write_bytes(b'PK\x03\x04 not really a zip' * 20)
    _raises(lambda: data.SRPairs(str(notzip), 8, 32), notzip, 'not a folder or a valid .zip')
    _raises(lambda: data.list_images(str(notzip)), notzip)
    good = _png_bytes(_pixels(2, 32, 32))
    zpath = tmp_path / 'pairs.zip'
    with zipfile.ZipFile(zpath, 'w', zipfile.ZIP_STORED) as z:
        z.writestr('set/hr_32/a.png', good)
        z.writestr('set/lr_8/a.png', _png_bytes(_pixels(2, 8, 8)))
        z.writestr('set/hr_32/b.png', good)
        z.writestr('set/lr_8/b.png', b'garbage, not a png')
    raw = bytearray(zpath.read_bytes())
    i = raw.index(good) + len(good) // 2  # flip bytes inside member set/hr_32/a.png: bad CRC
    raw[i:i + 8] = bytes(255 - c for c in raw[i:i + 8])
    zpath.write_bytes(bytes(raw))
    ds = data.SRPairs(str(zpath), 8, 32)
    _raises(lambda: ds[0], os.path.join(str(zpath), 'set', 'hr_32', 'a.png'))
    _raises(lambda: ds[1], os.path.join(str(zpath), 'set', 'lr_8', 'b.png'), 'not an image')

# ----------------------------------------------------------------------------- CLI


def test_cli_prepare(tmp_path, capsys):
    src = _make_src(tmp_path / 'src', n=4)
    (tmp_path / 'src' / 'img2.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    bad = os.path.join(src, 'img2.png')
    # a real `python data.py` run (one only: each one spends seconds importing torch)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'data.py'), 'prepare', src, str(tmp_path / 'out'),
                        '--lr', '8', '--hr', '32', '--val', '1', '--skip-bad', '--quiet'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'wrote 3 images' in r.stdout and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and bad in r.stderr and 'warning' in r.stderr
    assert data.SRPairs(str(tmp_path / 'out' / 'train'), 8, 32).names == ['img1.png', 'img3.png']
    # the same bad file without --skip-bad: exit status 2, one line naming it, no traceback
    assert data.main(['prepare', src, str(tmp_path / 'out2'), '--lr', '8', '--hr', '32', '--quiet']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: data: ') and bad in err and len(err.strip().splitlines()) == 1
    assert data.main(['download', 'nope']) == 2
    assert 'unknown data set' in capsys.readouterr().err


# ----------------------------------------------------------------------------- download


class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {}  # path -> (status, body, content_length or None to send len(body))
    hits = []

    def do_GET(self):
        self.hits.append(self.path)
        status, body, length = self.routes.get(self.path, (404, b'not found', None))
        self.send_response(status)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # a short body then a closed connection: a dropped download

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    _Handler.routes, _Handler.hits = {}, []
    t = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}', _Handler
    httpd.shutdown()
    httpd.server_close()


def _toy_zip_bytes():
    b = io.BytesIO()
    with zipfile.ZipFile(b, 'w') as z:
        z.writestr('toy_8_32/hr_32/a.png', _png_bytes(_pixels(0, 32, 32)))
        z.writestr('toy_8_32/lr_8/a.png', _png_bytes(_pixels(0, 8, 8)))
    return b.getvalue()


def test_download_success_and_cache(server, tmp_path):
    url, h = server
    body = _toy_zip_bytes()
    h.routes['/toy.zip'] = (200, body, None)
    path = data.download('toy_8_32', dest=str(tmp_path / 'cache'), url=url + '/toy.zip', progress=False)
    assert path == str(tmp_path / 'cache' / 'toy_8_32.zip') and os.listdir(tmp_path / 'cache') == ['toy_8_32.zip']
    assert data.SRPairs(path, 8, 32)[0]['hr'].shape == (3, 32, 32)
    assert h.hits == ['/toy.zip']
    again = data.download('toy_8_32', dest=str(tmp_path / 'cache'), url=url + '/gone.zip', progress=False)
    assert again == path and h.hits == ['/toy.zip']  # valid file there: no second request


def test_download_failures_leave_nothing(server, tmp_path):
    url, h = server
    body = _toy_zip_bytes()
    h.routes['/short.zip'] = (200, body[:len(body) // 2], len(body))  # says N bytes, sends N/2, closes
    h.routes['/page.zip'] = (200, b'<html>sign in to download</html>', None)
    h.routes['/nolayout.zip'] = (200, body, None)
    dest = tmp_path / 'cache'
    for path, needle in (('/short.zip', 'connection dropped'), ('/missing.zip', '404'),
                         ('/page.zip', 'not a valid zip'), ('/nolayout.zip', 'no hr_64/')):
        name = 'toy_16_64' if path == '/nolayout.zip' else 'toy_8_32'
        msg = _raises(lambda: data.download(name, dest=str(dest), url=url + path, progress=False),
                      url + path, needle, '--data PATH')
        assert 'Traceback' not in msg
        assert os.listdir(dest) == []  # no final file, no temp leftovers
    with socket.socket() as s:  # a port nobody listens on: "offline"
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    _raises(lambda: data.download('toy_8_32', dest=str(dest), url=f'http://127.0.0.1:{port}/x.zip',
                                  progress=False), f'127.0.0.1:{port}', 'could not fetch')
    assert os.listdir(dest) == []
    _raises(lambda: data.download('no_such_set', dest=str(dest)), 'no_such_set', '--url')

# ----------------------------------------------------------------------------- properties

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b'\x89PNG\r\n\x1a\n' + b),
                 st.integers(0, 10_000).map(lambda i: _png_bytes(_pixels(i % 7, 5, 6))[: i % 200])))
def test_random_bytes_load_or_data_error(blob):
    try:
        x = data.load_image(blob, name='blob.png')
    except DataError as e:
        assert 'blob.png' in str(e) and '\n' not in str(e)
    else:
        assert x.dim() == 3 and x.shape[0] == 3 and x.min() >= -1 and x.max() <= 1


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(['1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'I;16', 'I']),
       st.sampled_from(['PNG', 'TIFF', 'BMP', 'WEBP']), st.integers(0, 2**31))
def test_random_images_load_as_rgb(h, w, mode, fmt, seed):
    g = np.random.default_rng(seed)
    if mode in ('I;16', 'I'):
        img = Image.fromarray(g.integers(0, 65536, (h, w)).astype(np.uint16 if mode == 'I;16' else np.int32))
    else:
        img = Image.fromarray(g.integers(0, 256, (h, w, 4), dtype=np.uint8), 'RGBA').convert(mode)
    b = io.BytesIO()
    try:
        img.save(b, fmt)
    except (OSError, KeyError, ValueError):
        hypothesis.assume(False)  # PIL cannot write this mode in this format
    x = data.load_image(b.getvalue())
    assert x.shape == (3, h, w) and x.min() >= -1 and x.max() <= 1
