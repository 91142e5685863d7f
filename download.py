"""
The face data sets, fetched and laid out: FFHQ's 128x128 thumbnails as the SR3 layout (the whole zip resumably, or
its first N images by HTTP Range), CelebA-HQ 256 as an image folder, DREAM's 100 validation faces as a zip. Over
remote.py (the HTTP); data.py imports this file for its `download` command.

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
A finished data set is a folder with its download.json, built in a temporary sibling and renamed when complete.
"""
import concurrent.futures
import io
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import urllib.error
import zipfile

from PIL import Image, ImageOps
from tqdm import tqdm

import remote  # HTTP: resumable downloads, the entries of a remote zip by Range

DataError = remote.DataError  # one error class for data.py, download.py and remote.py
MIRROR_ENV = remote.MIRROR_ENV  # a base URL that serves the same file names (a mirror, a proxy, a test server)

CACHE_ENV = 'DREAM_RELAY_CACHE'    # where downloads live (default ~/.cache/dream-relay)
PARALLEL_FROM = 2000  # images of a local zip from which the SR layout is written by several processes
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
            response, _ = remote.get(url)
            with response:
                total = int(response.headers.get('Content-Length') or 0) or None
                got = remote.stream_to(response, f, total, 0, name, progress)
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
        blob = remote.read_member(archive, archive.getinfo(name), f'{zip_path} (remove it and run again)')
        _write_pair(name, blob, dirs, lr, hr)
    return len(names)


def write_sr_layout(images, root, lr, hr, progress=True):
    """(name, bytes) pairs (remote.Entries or a list) -> root/hr_{hr}/STEM.png, root/lr_{lr}/, root/sr_{lr}_{hr}/.
    A large local zip (the whole FFHQ: ~15 ms an image on one core) is shared among processes. Returns the count."""
    dirs = [os.path.join(root, d) for d in (f'hr_{hr}', f'lr_{lr}', f'sr_{lr}_{hr}')]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    names = [i.filename for i in images.infos] if isinstance(images, remote.Entries) else [n for n, _ in images]
    stems = {}
    for name in names:
        first = stems.setdefault(os.path.splitext(name.rsplit('/', 1)[-1])[0], name)
        if first != name:
            raise DataError(f'data: {name}: the same file stem as {first}')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    workers = min(cores, 16)
    zip_path = images.archive.filename if isinstance(images, remote.Entries) else None
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
        remote.fetch_file(url, zip_path, progress=progress,
                   sha256=FFHQ128['sha256'] if pinned else None, size=FFHQ128['size'] if pinned else None)
        images = remote.zip_images(zip_path)
        images.infos = images.infos[:n]
    else:
        images = remote.first_images(url, n, progress, by_hand=zip_path)

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
        zip_path = remote.fetch_file(url, os.path.join(cache_dir(), os.path.basename(url)), progress=progress)
        images = remote.zip_images(zip_path)
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
            remote.fetch_file(shard_url, path, progress=progress)
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
