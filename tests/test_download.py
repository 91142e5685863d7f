"""download.py against a loopback HTTP server made here (no test touches the internet): the first N images of a zip by
HTTP Range, a server that ignores Range, resume after a cut connection, checksum refusal, the SR layout written,
DREAM_RELAY_MIRROR, training on the result, and `train.py --task sr16_128` without --data (offline: one line)."""
import hashlib
import http.server
import io
import json
import os
import socket
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import data
import download
import remote
import train

N_IMAGES = 24


def _png(seed, size):
    """A noisy image (PNG barely compresses it: each is ~size*size*3 bytes, so a range fetch is visibly small)."""
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (size // 8, size // 8, 3)), np.ones((8, 8, 1)))
    noisy = np.clip(smooth + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(noisy).save(b, 'PNG')
    return b.getvalue()


def _zip(size=64, n=N_IMAGES, order=None, method=zipfile.ZIP_DEFLATED):
    """A zip of n images named like FFHQ's thumbnails (folders of 10 here), written in `order` (default: shuffled),
    with a licence file among them. Returns (bytes, {name: png bytes})."""
    images = {f'thumbnails/{i // 10 * 10:05d}/{i:05d}.png': _png(i, size) for i in range(n)}
    names = list(images)
    if order is None:
        np.random.default_rng(1).shuffle(names)
    else:
        names = order(names)
    b = io.BytesIO()
    with zipfile.ZipFile(b, 'w', method) as z:
        z.writestr('LICENSE.txt', 'terms')
        for name in names:
            z.writestr(name, images[name])
    return b.getvalue(), images


class _Server(http.server.BaseHTTPRequestHandler):
    files = {}         # path -> bytes
    mode = 'range'     # 'range': honour Range; 'ignore': always 200 with everything; 'cut': send half, then close
    extra = {}         # headers added to every response (e.g. X-Linked-Etag)
    sent = [0]         # body bytes written
    requests = []      # (path, Range header)
    errors = {}        # path -> HTTP status to answer instead (e.g. 503)

    def do_GET(self):
        self.requests.append((self.path, self.headers.get('Range')))
        body = self.files.get(self.path)
        if body is None or self.path in self.errors:
            self.send_response(self.errors.get(self.path, 404))
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        first, last, status = 0, len(body) - 1, 200
        spec = self.headers.get('Range')
        if spec and self.mode != 'ignore':
            a, b = spec.removeprefix('bytes=').split('-')
            first, last = (len(body) - int(b), len(body) - 1) if a == '' else (int(a), int(b) if b else len(body) - 1)
            first, last, status = max(first, 0), min(last, len(body) - 1), 206
            if first >= len(body):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(body)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
        part = body[first:last + 1]
        self.send_response(status)
        self.send_header('Content-Length', str(len(part)))
        if status == 206:
            self.send_header('Content-Range', f'bytes {first}-{last}/{len(body)}')
        for k, v in self.extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.mode == 'cut':
            part = part[:len(part) // 2]
            self.close_connection = True
        try:
            self.wfile.write(part)
            self.sent[0] += len(part)
        except OSError:
            pass

    def log_message(self, *a):
        pass


@pytest.fixture
def server(monkeypatch, tmp_path):
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Server)
    _Server.files, _Server.mode, _Server.extra, _Server.sent, _Server.requests = {}, 'range', {}, [0], []
    _Server.errors = {}
    threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    monkeypatch.setenv('DREAM_RELAY_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('DREAM_RELAY_MIRROR', raising=False)
    yield f'http://127.0.0.1:{httpd.server_address[1]}', _Server
    httpd.shutdown()
    httpd.server_close()


def closed_port_url():
    with socket.socket() as s:  # a port nobody listens on: "offline"
        s.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{s.getsockname()[1]}'


def _reference_layout(tmp_path, images, names, lr, hr):
    """data.prepare on the same images: the layout download.py must reproduce pixel for pixel."""
    src = tmp_path / 'ref_src'
    os.makedirs(src)
    for name in names:
        (src / name.rsplit('/', 1)[-1]).write_bytes(images[name])
    data.prepare(str(src), str(tmp_path / 'ref'), lr, hr, progress=False)
    return data.SRPairs(str(tmp_path / 'ref'), lr, hr)


def _same(a, b):
    assert a.names == b.names
    for i in range(len(a)):
        for k in ('hr', 'lr', 'sr'):
            assert (a[i][k] == b[i][k]).all(), (a.names[i], k)


def _leftovers(folder):
    return [f for f in os.listdir(folder) if '.partial-' in f or '.old-' in f]


def test_first_n_images_by_range_write_the_sr_layout(server, tmp_path, monkeypatch):
    url, srv = server
    body, images = _zip(order=lambda names: names[::-1])  # the first names last in the file: chosen by name
    srv.files['/ffhq.zip'] = body
    monkeypatch.setattr(remote, 'TAIL', 200)  # a tail too short for the central directory: fetched again from it
    root = download.ffhq128(tmp_path / 'out', n=5, lr=16, hr=64, url=url + '/ffhq.zip', progress=False)
    assert root == tmp_path / 'out'
    first5 = sorted(images)[:5]
    got = data.SRPairs(str(root), 16, 64)
    assert got.names == [n.rsplit('/', 1)[-1] for n in first5]
    _same(got, _reference_layout(tmp_path, images, first5, 16, 64))
    # really by Range: every request was a range, and far less than the zip was sent
    assert all(r is not None for _, r in srv.requests) and len(srv.requests) == 3
    assert srv.sent[0] < len(body) / 2, (srv.sent[0], len(body))
    licence = (root / 'LICENSE.txt').read_text()
    assert 'CC BY-NC-SA 4.0' in licence and 'non-commercial' in licence
    assert json.loads((root / 'download.json').read_text())['images'] == 5
    assert _leftovers(tmp_path) == []
    # done: a second call makes no request
    before = len(srv.requests)
    assert download.ffhq128(tmp_path / 'out', n=5, lr=16, hr=64, url=url + '/ffhq.zip', progress=False) == root
    assert len(srv.requests) == before


def test_a_server_that_ignores_range_is_streamed_until_n_images(server, tmp_path):
    url, srv = server
    body, images = _zip(order=sorted)  # file order = name order, so "the first N" is the same either way
    srv.files['/ffhq.zip'], srv.mode = body, 'ignore'
    root = download.ffhq128(tmp_path / 'out', n=4, lr=8, hr=32, url=url + '/ffhq.zip', progress=False)
    first4 = sorted(images)[:4]
    _same(data.SRPairs(str(root), 8, 32), _reference_layout(tmp_path, images, first4, 8, 32))


def test_a_bad_crc_is_refused_in_one_line_and_leaves_nothing(server, tmp_path, capsys, monkeypatch):
    url, srv = server
    monkeypatch.setattr(download, 'PARALLEL_FROM', 4)  # the whole-zip case: a worker process finds the bad entry
    body, images = _zip(order=sorted, method=zipfile.ZIP_STORED)
    first = sorted(images)[0]
    at = body.index(images[first]) + 100  # a byte inside the first image's stored data
    srv.files['/ffhq.zip'] = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
    dest = tmp_path / 'out'
    for mode, n in (('range', ['--n', '3']), ('ignore', ['--n', '3']), ('range', [])):  # [] : the whole zip
        srv.mode = mode
        code = data.main(['download', 'ffhq128', '--dest', str(dest), '--url', url + '/ffhq.zip', '--quiet'] + n)
        err = capsys.readouterr().err.strip()
        assert code == 2 and '\n' not in err and first in err and 'CRC' in err, err
        assert not dest.exists() and _leftovers(tmp_path) == []


def test_full_download_resumes_after_a_cut_connection_and_is_never_fetched_again(server, tmp_path, monkeypatch):
    url, srv = server
    monkeypatch.setattr(download, 'PARALLEL_FROM', 4)  # the whole-zip layout by several processes, as for FFHQ
    body, images = _zip(n=12, size=32)
    srv.files['/thumbnails128x128.zip'] = body
    srv.extra = {'X-Linked-Etag': '"' + hashlib.sha256(body).hexdigest() + '"', 'X-Linked-Size': str(len(body))}
    cache = tmp_path / 'cache'
    srv.mode = 'cut'
    with pytest.raises(data.DataError, match='run again to resume') as e:
        download.ffhq128(tmp_path / 'out', lr=8, hr=32, url=url + '/thumbnails128x128.zip', progress=False)
    assert '\n' not in str(e.value) and url in str(e.value)
    part = cache / 'thumbnails128x128.zip.part'
    assert part.exists() and 0 < part.stat().st_size < len(body)
    assert not (cache / 'thumbnails128x128.zip').exists() and not (tmp_path / 'out').exists()
    had = part.stat().st_size
    srv.mode = 'range'
    root = download.ffhq128(tmp_path / 'out', lr=8, hr=32, url=url + '/thumbnails128x128.zip', progress=False)
    assert srv.requests[-1] == ('/thumbnails128x128.zip', f'bytes={had}-')  # continued, not restarted
    assert (cache / 'thumbnails128x128.zip').read_bytes() == body and not part.exists()
    _same(data.SRPairs(str(root), 8, 32), _reference_layout(tmp_path, images, sorted(images), 8, 32))
    # the layout gone, the server gone: the finished zip is checked and used, never fetched again
    import shutil
    shutil.rmtree(root)
    requests = len(srv.requests)
    again = download.ffhq128(tmp_path / 'out', lr=8, hr=32, url=url + '/thumbnails128x128.zip', progress=False)
    assert len(srv.requests) == requests and len(data.SRPairs(str(again), 8, 32)) == 12


def test_a_checksum_mismatch_is_refused_and_leaves_nothing_complete(server, tmp_path, capsys):
    url, srv = server
    body, _ = _zip(n=6, size=32)
    srv.files['/thumbnails128x128.zip'] = body
    srv.extra = {'X-Linked-Etag': '"' + '0' * 64 + '"'}
    code = data.main(['download', 'ffhq128', '--lr', '8', '--hr', '32', '--dest', str(tmp_path / 'out'),
                      '--url', url + '/thumbnails128x128.zip', '--quiet'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and '\n' not in err and 'sha256 mismatch' in err and url in err and 'by hand' in err
    assert os.listdir(tmp_path / 'cache') == [] and not (tmp_path / 'out').exists()


def test_the_mirror_variable_points_every_source_at_one_server(server, tmp_path, monkeypatch):
    url, srv = server
    body, images = _zip(n=8, size=32)
    srv.files['/mirror/thumbnails128x128.zip'] = body
    faces = io.BytesIO()
    with zipfile.ZipFile(faces, 'w') as z:
        z.writestr('celebahq_16_128/hr_128/00000.png', _png(99, 128))
        z.writestr('celebahq_16_128/lr_16/00000.png', _png(98, 16))
    srv.files['/mirror/celebahq_16_128.zip'] = faces.getvalue()
    monkeypatch.setenv('DREAM_RELAY_MIRROR', url + '/mirror/')
    root = download.ffhq128(tmp_path / 'out', n=3, lr=8, hr=32, progress=False)
    assert len(data.SRPairs(str(root), 8, 32)) == 3
    held = data.download('celebahq_16_128', progress=False)
    assert held == str(tmp_path / 'cache' / 'celebahq_16_128.zip') and len(data.SRPairs(held, 16, 128)) == 1
    assert {p for p, _ in srv.requests} == {'/mirror/thumbnails128x128.zip', '/mirror/celebahq_16_128.zip'}


def test_offline_is_one_line_naming_the_url(server, tmp_path, capsys):
    bad = closed_port_url() + '/thumbnails128x128.zip'
    for n in (['--n', '3'], []):
        code = data.main(['download', 'ffhq128', '--dest', str(tmp_path / 'out'), '--url', bad, '--quiet'] + n)
        err = capsys.readouterr().err.strip()
        assert code == 2 and '\n' not in err and bad in err and 'by hand' in err
        assert not (tmp_path / 'out').exists()


def test_a_few_training_steps_on_the_downloaded_faces(server, tmp_path):
    url, srv = server
    body, _ = _zip(n=10, size=64)
    srv.files['/ffhq.zip'] = body
    root = download.ffhq128(tmp_path / 'faces', n=8, lr=16, hr=64, url=url + '/ffhq.zip', progress=False)
    out = tmp_path / 'run'
    train.main(['--task', 'sr16_64', '--model', 'tiny', '--data', str(root), '--out', str(out), '--max-iters', '3',
                '--batch-size', '2', '--holdout', '2', '--eval-every', '100', '--eval-n', '2', '--eval-steps', '2',
                '--log-every', '1'])
    losses = [json.loads(line) for line in open(out / 'log.jsonl')]
    steps = [r['step'] for r in losses if 'loss' in r]
    assert steps == [1, 2, 3] and all(np.isfinite(r['loss']) for r in losses if 'loss' in r)


def test_sr16_128_without_data_downloads_ffhq_into_the_cache(server, tmp_path, monkeypatch, capsys):
    url, srv = server
    body, _ = _zip(n=6, size=128)
    srv.files['/m/thumbnails128x128.zip'] = body
    faces = io.BytesIO()
    with zipfile.ZipFile(faces, 'w') as z:
        for i in range(3):
            z.writestr(f'celebahq_16_128/hr_128/{i:05d}.png', _png(50 + i, 128))
            z.writestr(f'celebahq_16_128/lr_16/{i:05d}.png', _png(60 + i, 16))
    srv.files['/m/celebahq_16_128.zip'] = faces.getvalue()
    monkeypatch.setenv('DREAM_RELAY_MIRROR', url + '/m')
    a = train.get_args(['--task', 'sr16_128', '--dream', '--model', 'tiny', '--out', str(tmp_path / 'run')])
    train_set, held, note = train.datasets(a)
    said = capsys.readouterr().out
    assert 'GB' in said and 'downloading' in said and str(tmp_path / 'cache' / 'ffhq128_16_128') in said
    assert a.data == str(tmp_path / 'cache' / 'ffhq128_16_128') and len(train_set) == 6
    assert len(held) == 3 and 'validation faces' in note  # DREAM's faces stay the held-out set


def test_sr16_128_without_data_offline_fails_in_one_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('DREAM_RELAY_MIRROR', closed_port_url())
    with pytest.raises(SystemExit) as e:
        train.main(['--task', 'sr16_128', '--dream', '--model', 'tiny', '--out', str(tmp_path / 'run')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and '\n' not in err, err
    assert 'could not download' in err and '/thumbnails128x128.zip' in err
    assert not (tmp_path / 'cache' / 'ffhq128_16_128').exists()


def test_other_tasks_without_data_say_how_to_get_it(capsys, tmp_path):
    for task, needle in (('sr16_64', 'download ffhq128 --n 5000 --lr 16 --hr 64'), ('relay16', 'celebahq256')):
        with pytest.raises(SystemExit):
            train.main(['--task', task, '--model', 'tiny', '--out', str(tmp_path / task)])
        err = capsys.readouterr().err.strip()
        assert '\n' not in err and '--data is required' in err and needle in err, err


def test_celebahq256_without_pyarrow_says_how_to_install_it(server, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, 'pyarrow', None)
    monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
    assert data.main(['download', 'celebahq256', '--dest', str(tmp_path / 'c'), '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'pip install pyarrow' in err


def test_celebahq256_from_a_zip_url_is_an_image_folder(server, tmp_path):
    url, srv = server
    body, images = _zip(n=5, size=32)
    srv.files['/celebahq256.zip'] = body
    root = download.celebahq256(tmp_path / 'c', n=4, url=url + '/celebahq256.zip', progress=False)
    folder = data.ImageFolder(str(root), 32)
    assert len(folder) == 4
    assert sorted(p.read_bytes() for p in root.glob('*.png')) == sorted(images[n] for n in sorted(images)[:4])


def test_celebahq256_reads_parquet_shards_until_the_last(server, tmp_path, monkeypatch):
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq
    url, srv = server
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(_png(7, 32))).save(jpeg, 'JPEG')
    shards = [[_png(1, 32), _png(2, 32), jpeg.getvalue()], [_png(3, 32), _png(4, 32)]]
    for i, blobs in enumerate(shards):  # the Hub's image feature: a struct of the file's bytes and its path
        rows = [{'bytes': b, 'path': None} for b in blobs]
        out = io.BytesIO()
        pq.write_table(pa.table({'image': rows}), out)
        srv.files[f'/m/{i:04d}.parquet'] = out.getvalue()
    monkeypatch.setenv('DREAM_RELAY_MIRROR', url + '/m')
    root = download.celebahq256(tmp_path / 'all', progress=False)
    assert sorted(os.listdir(root)) == ['00000.png', '00001.png', '00002.jpg', '00003.png', '00004.png',
                                        'LICENSE.txt', 'download.json']
    assert 'non-commercial' in (root / 'LICENSE.txt').read_text()
    assert (root / '00002.jpg').read_bytes() == shards[0][2] and len(data.ImageFolder(str(root), 32)) == 5
    assert '/m/0002.parquet' in [p for p, _ in srv.requests]  # the end of the shards is a 404
    requests = len(srv.requests)
    few = download.celebahq256(tmp_path / 'few', n=2, progress=False)
    assert len(data.ImageFolder(str(few), 32)) == 2 and len(srv.requests) == requests  # shard 0 was cached
    # a shard that fails otherwise than 404 is an error, not the end of the data set
    srv.errors['/m/0001.parquet'] = 503
    os.remove(tmp_path / 'cache' / 'celebahq256' / '0001.parquet')
    with pytest.raises(data.DataError, match='0001.parquet'):
        download.celebahq256(tmp_path / 'broken', progress=False)
    assert not (tmp_path / 'broken').exists()


def test_a_zip_brought_by_hand_is_used_offline(server, tmp_path):
    """The offline message says where to put the file; put there, it serves the whole set and --n, no network."""
    body, images = _zip(n=7, size=32)
    offline = closed_port_url() + '/thumbnails128x128.zip'
    place = str(tmp_path / 'cache' / 'thumbnails128x128.zip')
    for n in (2, None):
        with pytest.raises(data.DataError, match=f'put it at {place}'):  # the message names the place
            download.ffhq128(tmp_path / 'x', n=n, lr=8, hr=32, url=offline, progress=False)
    (tmp_path / 'cache' / 'thumbnails128x128.zip').write_bytes(body)
    few = download.ffhq128(tmp_path / 'few', n=2, lr=8, hr=32, url=offline, progress=False)
    assert data.SRPairs(str(few), 8, 32).names == [n.rsplit('/', 1)[-1] for n in sorted(images)[:2]]
    every = download.ffhq128(tmp_path / 'all', lr=8, hr=32, url=offline, progress=False)
    assert len(data.SRPairs(str(every), 8, 32)) == 7
