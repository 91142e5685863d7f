"""
Fetch the face data sets: resumable HTTP downloads checked by size and sha256, the first N images of a remote zip
by HTTP Range, and the SR3 layout written straight from the fetched images. A leaf: it imports nothing of ours
(data.py imports it, for its `download` command and for DataError, which lives here so both raise one class).

    python data.py download ffhq128 [--n N] [--lr 16] [--hr 128] [--dest DIR] [--url URL]
    python data.py download celebahq256 [--n N] [--dest DIR] [--url URL]      (parquet: pip install pyarrow)

Sources (every URL below can be replaced by --url, or by the environment variable DREAM_RELAY_MIRROR, a base URL
under which the same file name is looked up: BASE/thumbnails128x128.zip, BASE/celebahq_16_128.zip, BASE/0000.parquet):
* ffhq128: FFHQ's official 128x128 thumbnails (70,000 faces; DREAM's training set) as one zip of about 2.1 GB on the
  Hugging Face Hub, dataset nuwandaa/ffhq128 at a pinned revision. Its sha256 and exact size were not at hand when
  this was written: they are taken from the Hub's X-Linked-Etag / X-Linked-Size headers at download time, recorded
  beside the file and checked on every later use. FFHQ is CC BY-NC-SA 4.0 (NVIDIA): non-commercial use only.
* celebahq256: CelebA-HQ at 256x256 (RDM's face set), Hugging Face dataset eurecom-ds/celeba-hq-256 as the Hub's
  parquet conversion (default/train/NNNN.parquet at a pinned revision of refs/convert/parquet).

Zip mechanics (PKWARE APPNOTE): the end-of-central-directory record at the end of a zip points to the central
directory, which lists every entry with its local-header offset, sizes and CRC-32. `--n N` fetches the file's tail,
reads the central directory with the standard library's zipfile (through _Sparse, a file made of the fetched byte
ranges), picks the first N images in sorted name order and fetches one contiguous range covering them; zipfile then
checks each entry's CRC-32. A server that ignores Range (200 instead of 206) is read from its start instead, entry by
entry, until N images have arrived (then in the zip's own order).
"""
import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import pathlib
import re
import shutil
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

from PIL import Image, ImageOps
from tqdm import tqdm

MIRROR_ENV = 'DREAM_RELAY_MIRROR'  # a base URL that serves the same file names (a mirror, a proxy, a test server)
CACHE_ENV = 'DREAM_RELAY_CACHE'    # where downloads live (default ~/.cache/dream-relay)
TAIL = 1 << 16  # bytes of a zip's end fetched first: the end-of-central-directory record and, mostly, the directory
PARALLEL_FROM = 2000  # images of a local zip from which the SR layout is written by several processes
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')
HUB = 'https://huggingface.co/datasets'
FFHQ128 = dict(file='thumbnails128x128.zip', approx_bytes=2_110_000_000, sha256=None, size=None,
               url=f'{HUB}/nuwandaa/ffhq128/resolve/1b277b6efe3ba86ff0c712b88753892ca5c4e7a3/thumbnails128x128.zip')
CELEBAHQ256 = dict(url=f'{HUB}/eurecom-ds/celeba-hq-256/resolve/7b4962e4e2d1de995510a2f37adbea41dfbbba69/'
                       'default/train/{:04d}.parquet', file='{:04d}.parquet')
FFHQ_NOTE = """FFHQ thumbnails (128x128), fetched by dream-relay's `data.py download ffhq128` from {url}
(first {n} images in sorted name order), written as the SR3 layout hr_{hr}/, lr_{lr}/, sr_{lr}_{hr}/.

Licence: the FFHQ data set is made available by NVIDIA Corporation under CC BY-NC-SA 4.0 (Creative Commons
Attribution-NonCommercial-ShareAlike, https://creativecommons.org/licenses/by-nc-sa/4.0/): non-commercial use only;
credit the FFHQ paper (Karras, Laine, Aila, "A Style-Based Generator Architecture for Generative Adversarial
Networks", CVPR 2019), say what you changed (here: resized to {lr}x{lr} and bicubic up again), and share derivatives
under the same licence. The individual
photographs carry their Flickr authors' licences (CC BY 2.0, CC BY-NC 2.0, public domain marks, CC0, U.S.
Government Works). Full terms: https://github.com/NVlabs/ffhq-dataset/blob/master/LICENSE.txt
"""
CELEBAHQ_NOTE = """CelebA-HQ at 256x256, fetched by dream-relay's `data.py download celebahq256` from {url}.

Terms: CelebA-HQ (Karras et al., "Progressive Growing of GANs", ICLR 2018) is derived from CelebA (Liu et al.,
"Deep Learning Face Attributes in the Wild", ICCV 2015), whose images are for non-commercial research and
educational purposes only: http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
"""


class DataError(ValueError):
    """Bad input data or a failed download: the message is one line that names the file or the URL."""


def cache_dir():
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join('~', '.cache', 'dream-relay'))


def source_url(default, file, url=None):
    """--url wins, then DREAM_RELAY_MIRROR/FILE, then the pinned default."""
    if url:
        return url
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return mirror.rstrip('/') + '/' + file
    return default


def _fail(url, reason, path=None):
    by_hand = f'; to bring it by hand, fetch {url} some other way (e.g. `curl -L -C - -o FILE URL`)'
    if path:
        by_hand += f' and put it at {path}'
    one_line = ' '.join(str(reason).split())
    return DataError(f'data: could not download {url}: {one_line}{by_hand}, or set {MIRROR_ENV} to a mirror')

# ------------------------------------------------------------ HTTP


class _KeepHeaders(urllib.request.HTTPRedirectHandler):
    """Follow redirects, keeping every response's headers: the Hub puts X-Linked-Etag (the file's sha256) and
    X-Linked-Size on its redirect to the storage server, not on the final response."""

    def __init__(self, seen):
        self.seen = seen

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.seen.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.has_header('Range'):
            new.add_unredirected_header('Range', req.get_header('Range'))
        return new


def _get(url, first=None, last=None, suffix=None):
    """GET url, optionally a byte range (first..last inclusive, or the last `suffix` bytes).
    Returns (response, every header set seen on the way). The caller closes the response."""
    headers = {'User-Agent': 'dream-relay'}
    if suffix is not None:
        headers['Range'] = f'bytes=-{suffix}'
    elif first is not None:
        headers['Range'] = f"bytes={first}-{'' if last is None else last}"
    seen = []
    opener = urllib.request.build_opener(_KeepHeaders(seen))
    response = opener.open(urllib.request.Request(url, headers=headers), timeout=60)
    return response, seen + [response.headers]


def _total_size(response, start=0):
    """The whole file's size: from Content-Range on a 206, else Content-Length (+ the resumed offset); or None."""
    content_range = response.headers.get('Content-Range') or ''
    if '/' in content_range and not content_range.endswith('/*'):
        return int(content_range.rsplit('/', 1)[1])
    length = response.headers.get('Content-Length')
    return int(length) + start if length else None


def _linked(seen):
    """(sha256, size) the Hub announces in X-Linked-Etag / X-Linked-Size, None where absent."""
    sha = size = None
    for h in seen:
        etag = (h.get('X-Linked-Etag') or '').strip('"').removeprefix('W/').strip('"')
        if re.fullmatch(r'[0-9a-f]{64}', etag):
            sha = etag
        if (h.get('X-Linked-Size') or '').isdigit():
            size = int(h.get('X-Linked-Size'))
    return sha, size


def _copy(response, f, total, done, desc, progress):
    """Stream response into f with a progress bar in MB (done: bytes already there); returns the bytes written."""
    written = 0
    with tqdm(total=total, initial=done, unit='B', unit_scale=True, unit_divisor=1000, desc=desc,
              disable=not progress) as bar:
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()


def fetch_file(url, path, sha256=None, size=None, progress=True):
    """Download url to path, resumably. While incomplete the bytes live in PATH.part (a re-run continues from its size
    with a Range request); only a file of the right size and sha256 is renamed to PATH. The expected sha256 / size are
    the pinned ones, else the X-Linked-Etag / X-Linked-Size headers; they are kept in PATH.sha256, and a finished
    file is checked against them and never fetched again."""
    record = path + '.sha256'
    if os.path.isfile(path):  # finished before, or brought by hand: check it against what we know
        want_sha, want_size = sha256, size
        if os.path.isfile(record):
            recorded_sha, recorded_size = open(record).read().split()
            want_sha, want_size = recorded_sha, int(recorded_size)
        actual_sha, actual_size = sha256_of(path), os.path.getsize(path)
        if want_size in (None, actual_size) and want_sha in (None, actual_sha):
            with open(record, 'w') as f:
                f.write(f'{actual_sha} {actual_size}\n')
            return path
        os.remove(path)  # not the file we know: fetch it again
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + '.part'
    done = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response, seen = _get(url, first=done if done else None)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not done:  # 416: nothing left to send, the part file is already whole
            error = _fail(url, e, path)
            error.status = e.code  # celebahq256 stops at its first missing shard (404)
            raise error from None
        response, seen = None, [e.headers]
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise _fail(url, getattr(e, 'reason', e), path) from None
    linked_sha, linked_size = _linked(seen)
    sha256, size = sha256 or linked_sha, size or linked_size
    if response is not None:
        with response:
            if response.status != 206:
                done = 0  # the server ignored Range: start over
            total = size or _total_size(response, done)
            try:
                with open(part, 'ab' if done else 'wb') as f:
                    got = _copy(response, f, total, done, os.path.basename(path), progress)
            except (OSError, http.client.HTTPException) as e:  # a cut connection: the part file stays for the next run
                raise _fail(url, f'connection lost ({e}); run again to resume', path) from None
        if total is not None and done + got < total:
            raise _fail(url, f'connection dropped after {done + got} of {total} bytes; run again to resume', path)
    actual_size = os.path.getsize(part)
    actual_sha = sha256_of(part)
    for what, want, got in (('size', size, actual_size), ('sha256', sha256, actual_sha)):
        if want is not None and want != got:
            os.remove(part)
            raise _fail(url, f'{what} mismatch: expected {want}, got {got} (the partial file was removed)', path)
    with open(record, 'w') as f:
        f.write(f'{actual_sha} {actual_size}\n')
    os.replace(part, path)
    return path


def _check_zip(path, name):
    """None if path is a sound zip (with the hr_H/ lr_L/ layout when name ends in _L_H), else why not."""
    with open(path, 'rb') as f:
        if f.read(23) == b'version https://git-lfs':
            return 'got a Git LFS pointer, not the file (use the media.githubusercontent.com URL)'
    try:
        with zipfile.ZipFile(path) as z:
            bad, names = z.testzip(), z.namelist()
    except Exception as e:
        return f"not a valid zip ({' '.join(str(e).split())})"
    if bad is not None:
        return f'corrupt member {bad}'
    m = re.fullmatch(r'.*_(\d+)_(\d+)', name)
    if m:
        for d in (f'hr_{m[2]}/', f'lr_{m[1]}/'):
            if not any(re.match(rf'([^/]+/)?{d}', n) for n in names):
                return f'the zip has no {d} folder'
    return None


def fetch_small_zip(url, name, dest, progress=True):
    """A small zip (DREAM's 100 validation faces) to dest/NAME.zip, whole or not at all (no resume: a temp file,
    checked, then renamed). A sound file already there is returned without a request."""
    final = os.path.join(dest, name + '.zip')
    if os.path.isfile(final) and _check_zip(final, name) is None:
        return final
    os.makedirs(dest, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f'.{name}.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as f:
            response, _ = _get(url)
            with response:
                total = int(response.headers.get('Content-Length') or 0) or None
                got = _copy(response, f, total, 0, name, progress)
        if total is not None and got != total:
            raise OSError(f'connection dropped after {got} of {total} bytes')
        why = _check_zip(tmp, name)
        if why:
            raise OSError(why)
        os.replace(tmp, final)
        return final
    except Exception as e:  # HTTPError, URLError (offline), timeouts, IncompleteRead, our OSErrors
        reason = None if isinstance(e, urllib.error.HTTPError) else getattr(e, 'reason', None)
        raise DataError(f"data: could not fetch {url}: {' '.join(str(reason or e).split())}. Fetch it some other "
                        f'way (put it at {final}), set {MIRROR_ENV}, or pass --data PATH (a folder or zip of '
                        'images) to train.py') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------ the first N images of a remote zip


class _Sparse(io.RawIOBase):
    """A read-only file of `size` bytes of which only some ranges are known: {offset: file object holding the bytes
    from there}. zipfile reads the central directory and the fetched entries through it; a read elsewhere raises
    _Missing(offset)."""

    def __init__(self, size, pieces):
        self.size, self.pieces, self.pos = size, dict(pieces), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def read(self, n=-1):
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b''
        for start, piece in self.pieces.items():
            if start <= self.pos and self.pos + n <= start + piece.seek(0, 2):
                piece.seek(self.pos - start)
                self.pos += n
                return piece.read(n)
        raise _Missing(self.pos)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Missing(Exception):
    def __init__(self, offset):
        super().__init__(offset)
        self.offset = offset


def _is_image(name):
    parts = name.split('/')
    hidden = any(p.startswith('.') or p == '__MACOSX' for p in parts)
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS and not hidden


class _Entries:
    """(name, bytes) of some entries of a zip, read as they are iterated (zipfile checks each one's CRC-32)."""

    def __init__(self, archive, infos, where):
        self.archive, self.infos, self.where = archive, infos, where

    def __len__(self):
        return len(self.infos)

    def __iter__(self):
        for info in self.infos:
            yield info.filename, _read_member(self.archive, info, self.where)


def first_images(url, n, progress=True, by_hand=None):
    """(name, bytes) of the first n images (sorted names) of the zip at url, fetched by HTTP Range: the tail
    (end-of-central-directory and central directory), then one range covering the chosen entries, spooled to a
    temporary file. Each entry's CRC-32 is checked as it is read."""
    try:
        response, _ = _get(url, suffix=TAIL)
        with response:
            if response.status != 206:  # Range ignored: read the zip from its start
                return _stream_images(response, n, url, progress)
            size = _total_size(response)
            pieces = {size - int(response.headers['Content-Length']): io.BytesIO(response.read())}
        try:
            entries = zipfile.ZipFile(_Sparse(size, pieces)).infolist()
        except _Missing as e:  # the central directory starts before the tail we have: fetch from there to the end
            pieces = {e.offset: _read_range(url, e.offset, size - 1)}
            entries = zipfile.ZipFile(_Sparse(size, pieces)).infolist()
        images = sorted((e for e in entries if _is_image(e.filename) and not e.is_dir()), key=lambda e: e.filename)
        chosen = images[:n]
        if not chosen:
            raise DataError(f'data: {url}: no images in the zip')
        by_offset = sorted(entries, key=lambda e: e.header_offset)
        ends = {e.header_offset: nxt.header_offset for e, nxt in zip(by_offset, by_offset[1:])}
        cd_start = min(pieces)
        first = min(e.header_offset for e in chosen)
        last = max(ends.get(e.header_offset, cd_start) for e in chosen) - 1
        pieces[first] = _read_range(url, first, last, progress=progress, desc=f'{len(chosen)} images')
        return _Entries(zipfile.ZipFile(_Sparse(size, pieces)), chosen, url)
    except urllib.error.HTTPError as e:
        raise _fail(url, e, by_hand) from None
    except DataError:
        raise
    except (urllib.error.URLError, TimeoutError) as e:
        raise _fail(url, getattr(e, 'reason', e), by_hand) from None
    except (OSError, ValueError, http.client.HTTPException, zipfile.BadZipFile, _Missing) as e:
        raise _fail(url, f'not a readable zip ({type(e).__name__}: {e})', by_hand) from None


def _read_range(url, first, last, progress=False, desc=''):
    response, _ = _get(url, first=first, last=last)
    buffer = tempfile.SpooledTemporaryFile(max_size=1 << 26)
    with response:
        if response.status != 206:
            raise DataError(f'data: {url}: the server stopped honouring Range requests')
        try:
            _copy(response, buffer, last - first + 1, 0, desc, progress)
        except (OSError, http.client.HTTPException):
            pass  # a cut connection: reported below with the byte count
    if buffer.tell() != last - first + 1:
        raise _fail(url, f'connection dropped after {buffer.tell()} of {last - first + 1} bytes')
    return buffer


def _read_member(archive, entry, url):
    try:
        return archive.read(entry)
    except zipfile.BadZipFile as e:  # zipfile checks the CRC-32 of what it read
        raise DataError(f'data: {url}: entry {entry.filename}: {e}') from None


def _stream_images(response, n, url, progress):
    """The first n image entries of a zip read from its start (a server that ignores Range)."""
    buffer, out = _Buffer(response), []
    with tqdm(total=n, unit='img', desc='images', disable=not progress) as bar:
        while len(out) < n:
            header = buffer.take(30)
            if len(header) < 30 or header[:4] != b'PK\x03\x04':
                break  # the central directory (or the end): no more entries
            flags, method, _, _, crc, size, _, name_len, extra_len = struct.unpack('<HHHHIIIHH', header[6:])
            name = buffer.take(name_len).decode('utf-8' if flags & 0x800 else 'cp437')
            buffer.take(extra_len)
            if method == 0 and not flags & 8:
                blob = buffer.take(size)
            elif method == 8:
                blob = buffer.inflate()
            else:
                raise DataError(f'data: {url}: entry {name}: compression method {method} needs Range support')
            if flags & 8:  # a data descriptor follows: [signature] crc, compressed size, size
                descriptor = buffer.take(4)
                crc = struct.unpack('<I', buffer.take(4) if descriptor == b'PK\x07\x08' else descriptor)[0]
                buffer.take(8)
            if zlib.crc32(blob) != crc:
                raise DataError(f'data: {url}: entry {name}: bad CRC-32')
            if _is_image(name):
                out.append((name, blob))
                bar.update(1)
    if not out:
        raise DataError(f'data: {url}: no images in the zip')
    return out


class _Buffer:
    """Exact reads from a response, and raw-deflate decoding that gives back the bytes after the stream's end."""

    def __init__(self, response):
        self.response, self.pending = response, b''

    def take(self, n):
        while len(self.pending) < n:
            chunk = self.response.read(1 << 16)
            if not chunk:
                break
            self.pending += chunk
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def inflate(self):
        decoder, out = zlib.decompressobj(-15), []
        while not decoder.eof:
            chunk = self.pending or self.response.read(1 << 16)
            if not chunk:
                raise OSError('the zip ends inside an entry')
            self.pending = b''
            out.append(decoder.decompress(chunk))
        self.pending = decoder.unused_data
        return b''.join(out)

# ------------------------------------------------------------ the SR layout, written as the images arrive


def _rgb(blob, name):
    """Image bytes -> 8-bit RGB, transparency composited on white (as data.py reads images)."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ('RGBA', 'LA', 'PA') or 'transparency' in img.info:
                img = img.convert('RGBA')
                img = Image.alpha_composite(Image.new('RGBA', img.size, (255, 255, 255, 255)), img)
            return img.convert('RGB')
    except Exception as e:
        raise DataError(f'data: {name}: not a readable image ({type(e).__name__}: {e})') from None


def _write_pair(name, blob, dirs, lr, hr):
    """One image -> dirs = (hr_H, lr_L, sr_L_H)/STEM.png: centre crop and bicubic to hr, lr = bicubic down of hr,
    sr = bicubic up of lr (the pixels `data.py prepare` writes)."""
    img = _rgb(blob, name)
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    img_hr = img if (w, h) == (hr, hr) else img.resize((hr, hr), Image.BICUBIC, box=box)
    img_lr = img_hr.resize((lr, lr), Image.BICUBIC)
    stem = os.path.splitext(name.rsplit('/', 1)[-1])[0]
    for d, out in zip(dirs, (img_hr, img_lr, img_lr.resize((hr, hr), Image.BICUBIC))):
        out.save(os.path.join(d, stem + '.png'))


def _write_chunk(zip_path, names, dirs, lr, hr):
    """A worker's share of a local zip (each process opens the zip itself)."""
    archive = zipfile.ZipFile(zip_path)
    for name in names:
        blob = _read_member(archive, archive.getinfo(name), f'{zip_path} (remove it and run again)')
        _write_pair(name, blob, dirs, lr, hr)
    return len(names)


def write_sr_layout(images, root, lr, hr, progress=True):
    """(name, bytes) pairs (_Entries or a list) -> root/hr_{hr}/STEM.png, root/lr_{lr}/, root/sr_{lr}_{hr}/.
    A large local zip (the whole FFHQ: ~15 ms an image on one core) is shared among processes. Returns the count."""
    dirs = [os.path.join(root, d) for d in (f'hr_{hr}', f'lr_{lr}', f'sr_{lr}_{hr}')]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    names = [i.filename for i in images.infos] if isinstance(images, _Entries) else [n for n, _ in images]
    stems = {}
    for name in names:
        first = stems.setdefault(os.path.splitext(name.rsplit('/', 1)[-1])[0], name)
        if first != name:
            raise DataError(f'data: {name}: the same file stem as {first}')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    workers = min(cores, 16)
    zip_path = images.archive.filename if isinstance(images, _Entries) else None
    bar = tqdm(total=len(names), desc='SR layout', unit='img', disable=not progress)
    if isinstance(zip_path, str) and len(names) >= PARALLEL_FROM and workers > 1:
        size = max(1, min(500, len(names) // (4 * workers)))
        chunks = [names[i:i + size] for i in range(0, len(names), size)]
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_write_chunk, zip_path, chunk, dirs, lr, hr) for chunk in chunks]
            for job in concurrent.futures.as_completed(jobs):
                bar.update(job.result())  # a worker's DataError (a bad CRC) is raised here
    else:
        for name, blob in images:
            _write_pair(name, blob, dirs, lr, hr)
            bar.update(1)
    bar.close()
    return len(names)


def _zip_images(path):
    """[(name, bytes)] of every image of a local zip, sorted by name, read one at a time (CRC-32 checked)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f'data: {path}: not a valid zip ({e}); remove it and run again') from None
    infos = sorted((i for i in archive.infolist() if _is_image(i.filename)), key=lambda i: i.filename)
    return _Entries(archive, infos, f'{path} (remove it and run again)')


def _publish(build, dest, about):
    """Build a folder in a temp sibling of dest with build(tmp), then rename it to dest: a folder at dest is always
    complete, with its download.json. An earlier download of ours at dest is replaced; anything else is refused."""
    dest = os.path.abspath(dest)
    record = os.path.join(dest, 'download.json')
    if os.path.isdir(dest) and os.listdir(dest) and not os.path.isfile(record):
        raise DataError(f'data: {dest}: not empty and not a download of ours; pass another --dest or remove it')
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(dest) + '.partial-')
    try:
        count = build(tmp)
        with open(os.path.join(tmp, 'download.json'), 'w') as f:
            json.dump({**about, 'images': count}, f, indent=1)
        old = None
        if os.path.isdir(dest):
            old = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(dest) + '.old-')
            os.replace(dest, os.path.join(old, 'x'))
        os.replace(tmp, dest)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return dest


def _done(dest, about):
    """True when dest already holds this very download (same source, n and sizes)."""
    try:
        with open(os.path.join(dest, 'download.json')) as f:
            held = json.load(f)
    except (OSError, ValueError):
        return False
    return all(held.get(k) == v for k, v in about.items())


def ffhq128(dest=None, n=None, lr=16, hr=128, url=None, progress=True):
    """FFHQ thumbnails as the SR3 layout under dest (default data/ffhq128_{lr}_{hr}); returns it as a Path.
    n: only the first n images (sorted names) by HTTP Range, else the whole zip, resumably, into cache_dir()."""
    if not 0 < lr < hr:
        raise DataError(f'data: need 0 < lr < hr, got lr={lr}, hr={hr}')
    if n is not None and n <= 0:
        raise DataError(f'data: --n must be positive, got {n}')
    url = source_url(FFHQ128['url'], FFHQ128['file'], url)
    dest = dest or os.path.join('data', f'ffhq128_{lr}_{hr}')
    about = dict(source='ffhq128', url=url, n=n, lr=lr, hr=hr)
    if _done(dest, about):
        return pathlib.Path(dest)
    zip_path = os.path.join(cache_dir(), FFHQ128['file'])
    if n is None or os.path.isfile(zip_path):  # the whole zip, or the first n of the one already here
        pinned = url == FFHQ128['url']
        fetch_file(url, zip_path, progress=progress,
                   sha256=FFHQ128['sha256'] if pinned else None, size=FFHQ128['size'] if pinned else None)
        images = _zip_images(zip_path)
        images.infos = images.infos[:n]
    else:
        images = first_images(url, n, progress, by_hand=zip_path)

    def build(tmp):
        with open(os.path.join(tmp, 'LICENSE.txt'), 'w') as f:
            f.write(FFHQ_NOTE.format(url=url, n=n or 'all', lr=lr, hr=hr))
        return write_sr_layout(images, tmp, lr, hr, progress)
    return pathlib.Path(_publish(build, dest, about))


def celebahq256(dest=None, n=None, url=None, progress=True):
    """CelebA-HQ 256x256 as a plain image folder (default data/celebahq256): parquet shards (needs pyarrow) or, with
    --url, a zip of images. n: stop after n images (whole shards are fetched). Returns the folder as a Path."""
    dest = dest or os.path.join('data', 'celebahq256')
    about = dict(source='celebahq256', url=url or os.environ.get(MIRROR_ENV) or CELEBAHQ256['url'], n=n)
    if _done(dest, about):
        return pathlib.Path(dest)
    if url and url.lower().endswith('.zip'):
        zip_path = fetch_file(url, os.path.join(cache_dir(), os.path.basename(url)), progress=progress)
        images = _zip_images(zip_path)
        images.infos = images.infos[:n]
    else:
        images = _parquet_images(url, n, progress)

    def build(tmp):
        with open(os.path.join(tmp, 'LICENSE.txt'), 'w') as f:
            f.write(CELEBAHQ_NOTE.format(url=about['url']))
        count = 0
        for name, blob in images:
            with open(os.path.join(tmp, f'{count:05d}{_extension(blob, name)}'), 'wb') as f:
                f.write(blob)
            count += 1
        return count
    return pathlib.Path(_publish(build, dest, about))


def _extension(blob, name):
    """The file extension of an image's bytes, from its content (a parquet row need not name its file)."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            kind = img.format
    except Exception as e:
        raise DataError(f'data: {name}: not a readable image ({type(e).__name__}: {e})') from None
    return {'JPEG': '.jpg', 'PNG': '.png', 'WEBP': '.webp', 'BMP': '.bmp', 'TIFF': '.tif'}.get(kind, '.png')


def _parquet_images(url, n, progress):
    """(name, bytes) of the images of parquet shards 0000, 0001, ... (the Hub's image column: a struct of the file's
    bytes and path) until a shard is missing (404) or n images have come; one shard in memory at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError('data: celebahq256 is stored as parquet, which needs pyarrow: pip install pyarrow') from None
    count, shard = 0, 0
    while n is None or count < n:
        shard_url = url or source_url(CELEBAHQ256['url'].format(shard), CELEBAHQ256['file'].format(shard))
        path = os.path.join(cache_dir(), 'celebahq256', CELEBAHQ256['file'].format(shard))
        try:
            fetch_file(shard_url, path, progress=progress)
        except DataError as e:
            if shard == 0 or url or getattr(e, 'status', None) != 404:
                raise
            return  # past the last shard
        for row in pq.read_table(path).column('image').to_pylist():
            if n is not None and count == n:
                return
            yield row.get('path') or f'{shard_url}#{count}', row['bytes']
            count += 1
        if url:
            return
        shard += 1


if __name__ == '__main__':
    sys.exit('run `python data.py download ...`')
