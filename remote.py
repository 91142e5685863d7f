"""
HTTP for the data sets: resumable downloads checked by size and sha256, and the entries of a remote zip by HTTP Range.
A leaf: it imports nothing of ours (download.py builds the data sets on it; DataError lives here so data.py,
download.py and this file raise one class).

Zip mechanics (PKWARE APPNOTE): the end-of-central-directory record at the end of a zip points to the central
directory, which lists every entry with its local-header offset, sizes and CRC-32. first_images fetches the file's
tail, reads the central directory with the standard library's zipfile (through _Sparse, a file made of the fetched
byte ranges), picks the first N images in sorted name order and fetches one contiguous range covering them; zipfile
then checks each entry's CRC-32 as it is read. A server that ignores Range (200 instead of 206) is read from its
start instead, entry by entry, until N images have arrived (then in the zip's own order).
"""
import hashlib
import http.client
import io
import os
import re
import struct
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

from tqdm import tqdm

MIRROR_ENV = 'DREAM_RELAY_MIRROR'  # a base URL that serves the same file names (a mirror, a proxy, a test server)
TAIL = 1 << 16  # bytes of a zip's end fetched first: the end-of-central-directory record and, mostly, the directory
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


class DataError(ValueError):
    """Bad input data or a failed download: the message is one line that names the file or the URL."""


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


def get(url, first=None, last=None, suffix=None):
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


def stream_to(response, f, total, done, desc, progress):
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
        response, seen = get(url, first=done if done else None)
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
                    got = stream_to(response, f, total, done, os.path.basename(path), progress)
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
            piece.seek(0, 2)
            if start <= self.pos and self.pos + n <= start + piece.tell():
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


def is_image(name):
    parts = name.split('/')
    hidden = any(p.startswith('.') or p == '__MACOSX' for p in parts)
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS and not hidden


class Entries:
    """(name, bytes) of some entries of a zip, read as they are iterated (zipfile checks each one's CRC-32)."""

    def __init__(self, archive, infos, where):
        self.archive, self.infos, self.where = archive, infos, where

    def __len__(self):
        return len(self.infos)

    def __iter__(self):
        for info in self.infos:
            yield info.filename, read_member(self.archive, info, self.where)


def first_images(url, n, progress=True, by_hand=None):
    """(name, bytes) of the first n images (sorted names) of the zip at url, fetched by HTTP Range: the tail
    (end-of-central-directory and central directory), then one range covering the chosen entries, spooled to a
    temporary file. Each entry's CRC-32 is checked as it is read."""
    try:
        response, _ = get(url, suffix=TAIL)
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
        images = sorted((e for e in entries if is_image(e.filename) and not e.is_dir()), key=lambda e: e.filename)
        chosen = images[:n]
        if not chosen:
            raise DataError(f'data: {url}: no images in the zip')
        by_offset = sorted(entries, key=lambda e: e.header_offset)
        ends = {e.header_offset: nxt.header_offset for e, nxt in zip(by_offset, by_offset[1:])}
        cd_start = min(pieces)
        first = min(e.header_offset for e in chosen)
        last = max(ends.get(e.header_offset, cd_start) for e in chosen) - 1
        pieces[first] = _read_range(url, first, last, progress=progress, desc=f'{len(chosen)} images')
        return Entries(zipfile.ZipFile(_Sparse(size, pieces)), chosen, url)
    except urllib.error.HTTPError as e:
        raise _fail(url, e, by_hand) from None
    except DataError:
        raise
    except (urllib.error.URLError, TimeoutError) as e:
        raise _fail(url, getattr(e, 'reason', e), by_hand) from None
    except (OSError, ValueError, http.client.HTTPException, zipfile.BadZipFile, _Missing) as e:
        raise _fail(url, f'not a readable zip ({type(e).__name__}: {e})', by_hand) from None


def _read_range(url, first, last, progress=False, desc=''):
    response, _ = get(url, first=first, last=last)
    buffer = tempfile.SpooledTemporaryFile(max_size=1 << 26)
    with response:
        if response.status != 206:
            raise DataError(f'data: {url}: the server stopped honouring Range requests')
        try:
            stream_to(response, buffer, last - first + 1, 0, desc, progress)
        except (OSError, http.client.HTTPException):
            pass  # a cut connection: reported below with the byte count
    if buffer.tell() != last - first + 1:
        raise _fail(url, f'connection dropped after {buffer.tell()} of {last - first + 1} bytes')
    return buffer


def read_member(archive, entry, url):
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
            if is_image(name):
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


def zip_images(path):
    """[(name, bytes)] of every image of a local zip, sorted by name, read one at a time (CRC-32 checked)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f'data: {path}: not a valid zip ({e}); remove it and run again') from None
    infos = sorted((i for i in archive.infolist() if is_image(i.filename)), key=lambda i: i.filename)
    return Entries(archive, infos, f'{path} (remove it and run again)')
