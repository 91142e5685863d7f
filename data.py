"""
Image I/O and data sets for SR3 / DREAM super-resolution and relay diffusion.

Images are float tensors (3, H, W) in [-1, 1]. They pass through 8-bit RGB on the way in and out
(SR3 convention: clamp to [-1, 1], (x + 1) / 2, x255, round) and every resize is PIL bicubic on the
8-bit image, so `resize`, `prepare` and evaluate.py's consistency metric see the same pixels.
PIL's bicubic is antialiased when it shrinks (the kernel widens with the scale factor).

SR layout (SR3 / DREAM), in a folder or a .zip, possibly one level down (celebahq_16_128/hr_128/...):
    hr_128/00000.png    lr_16/00000.png    [sr_16_128/00000.png = bicubic up of lr]
`prepare` builds it from any images: centre crop, bicubic to hr, lr = bicubic down of hr, sr =
bicubic up of lr. (SR3's script makes lr from the source image; we make it from hr, so lr is
exactly hr's bicubic downsample, which is what the consistency metric checks.)

Conversions: grayscale / palette / CMYK -> RGB; 16-bit (I;16, I) -> 8 bits (v / 257, rounded);
transparency (RGBA, LA, palette or tRNS) is composited on WHITE, the image as a viewer shows it
(dropping alpha would expose whatever colour hides under transparent pixels).
Bad input raises DataError, one line naming the file; the CLI prints `error: ...` and exits 2.

    python data.py prepare SRC DST --lr 16 --hr 128 [--val N] [--skip-bad]
    python data.py prepare SRC DST --overwrite      (clears a non-empty DST first; without it DST is refused)
    python data.py download celebahq_16_128 [--dest DIR] [--url URL]
    python data.py download ffhq128 [--n N] [--lr 16] [--hr 128] [--dest DIR] [--url URL]
    python data.py download celebahq256 [--n N] [--dest DIR] [--url URL]
Every download also honours DREAM_RELAY_MIRROR (a base URL under which the same file names are looked up).
"""
import argparse
import hashlib
import io
import math
import os
import re
import sys
import shutil
import zipfile

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

import download as fetch  # `download`'s data sets (download.py, over remote.py's HTTP); below this file

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')
RESAMPLE = {k: getattr(Image, k.upper()) for k in ('bicubic', 'bilinear', 'nearest', 'lanczos', 'box')}
# The DREAM repository keeps its CelebA-HQ validation set (100 faces) as datasets/celebahq_16_128.zip
# (its sr3/README unzips ../datasets/celebahq_16_128.zip; the config reads ../datasets/celebahq_16_128).
# github.com/OWNER/REPO/raw/HEAD/... follows the default branch, whatever its name, and redirects to
# media.githubusercontent.com by itself if the file is stored with Git LFS.
URLS = {'celebahq_16_128': 'https://github.com/jinxinzhou/DREAM/raw/HEAD/datasets/celebahq_16_128.zip'}
DataError = fetch.DataError  # bad input data: the message is one line that names the file and the problem


def _err(where, problem, exc=None):
    detail = f" ({' '.join(str(exc).split()) or type(exc).__name__})" if exc is not None else ''
    return DataError(f"data: {where}: {problem}{detail}")

# ------------------------------------------------------------ pixels: bytes <-> PIL <-> tensor


def _decode(data, name):
    """Bytes of an image file -> fully decoded 8-bit RGB PIL image, or DataError naming `name`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode everything now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
                a = np.nan_to_num(np.asarray(img).astype(np.float64))
                if img.mode == 'F' and a.size and 0 <= a.min() and a.max() <= 1:
                    a = a * 255.0  # float images in [0, 1] (the usual float TIFF); other floats are taken as 0-255
                elif img.mode != 'F':
                    a = a / 257.0  # 16-bit: 65535 -> 255
                img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
            if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in img.info:
                img = img.convert('RGBA')
                img = Image.alpha_composite(Image.new('RGBA', img.size, (255, 255, 255, 255)), img)
            return img.convert('RGB')
    except Image.UnidentifiedImageError as e:
        raise _err(name, 'not an image, or an unsupported format', e) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _err(name, 'truncated or corrupt image', e) from None


def _to_tensor(img):  # 8-bit RGB PIL -> (3, H, W) float in [-1, 1]
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(x):
    """[-1, 1] float -> uint8 tensor, SR3 convention: clamp, (x + 1) / 2, x255, round."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)


def _to_pil(x):
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(x.shape)}")
    return Image.fromarray(np.ascontiguousarray(to_uint8(x).permute(1, 2, 0).cpu().numpy()))


def _square(img, size):
    """Centre crop to a square, then bicubic resize to size x size."""
    (w, h), s = img.size, min(img.size)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img if (w, h) == (size, size) else img.resize((size, size), Image.BICUBIC, box=box)


def resize(x, size, resample='bicubic'):
    """Resize (3, H, W) or (B, 3, H, W) in [-1, 1] with PIL on the 8-bit image (as `prepare` does).
    size: int (square) or (height, width). Returns float in [-1, 1] on x's device."""
    if x.dim() == 4:
        return torch.stack([resize(xi, size, resample) for xi in x])
    h, w = (size, size) if isinstance(size, int) else size
    return _to_tensor(_to_pil(x).resize((w, h), RESAMPLE[resample])).to(x.device)


def save_image(x, path):
    """x: (3, H, W) in [-1, 1] -> PNG file (parent folders are created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _to_pil(x).save(path)


def save_grid(images, path, nrow=None, pad=2):
    """(N, 3, H, W) in [-1, 1], or a list of (3, H, W) / (n, 3, H, W) of one size -> one PNG grid on white,
    nrow images a row (default: a list of equal batches gets a row each, else about square)."""
    if isinstance(images, (list, tuple)):
        if nrow is None and all(im.dim() == 4 and len(im) == len(images[0]) for im in images):
            nrow = len(images[0])
        images = torch.cat([im.reshape(-1, *im.shape[-3:]).detach().float().cpu() for im in images])
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    grid = torch.ones(3, pad + math.ceil(n / nrow) * (h + pad), pad + nrow * (w + pad))
    for i, im in enumerate(images.detach().float().cpu()):
        y, x = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, y:y + h, x:x + w] = im
    save_image(grid, path)


# ------------------------------------------------------------ where images live: a folder or a .zip


def _hidden(rel):
    return any(p.startswith('.') or p == '__MACOSX' for p in rel.split('/'))


def _is_image(rel):
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTS and not _hidden(rel)


class _Store:
    """The image files of a folder (recursive) or of a .zip, read by relative name ('a/b.png').
    A zip is opened lazily once per process (never pickled), so DataLoader workers each get theirs."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self._zip = self._pid = None
        if os.path.isdir(self.root):
            self.is_zip, names = False, []
            for d, subdirs, files in os.walk(self.root, followlinks=True):
                rel = os.path.relpath(d, self.root).replace(os.sep, '/') + '/'
                names += [(rel + n).removeprefix('./') for n in files + [s + '/' for s in subdirs]]
        elif os.path.isfile(self.root):
            self.is_zip, names = True, self._zipfile().namelist()
        else:
            raise _err(self.root, 'no such file or folder')
        self.files = sorted(n for n in names if _is_image(n))
        self.dirs = set()  # every folder on the way to every entry: 'a/b/c.png' -> 'a', 'a/b'
        for n in names:
            parts = n.rstrip('/').split('/')
            self.dirs.update('/'.join(parts[:i]) for i in range(1, len(parts) + n.endswith('/')))
        self.dirs = {d for d in self.dirs if not _hidden(d)}

    def listdir(self, d):
        return {f.rpartition('/')[2] for f in self.files if f.rpartition('/')[0] == d}

    def __getstate__(self):
        return {**self.__dict__, '_zip': None, '_pid': None}

    def _zipfile(self):
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip, self._pid = zipfile.ZipFile(self.root), os.getpid()
            except Exception as e:
                raise _err(self.root, 'not a folder or a valid .zip file', e) from None
        return self._zip

    def label(self, rel):
        return os.path.join(self.root, *rel.split('/'))

    def read(self, rel):
        z = self._zipfile() if self.is_zip else None
        try:
            if z is not None:
                return z.read(rel)
            with open(self.label(rel), 'rb') as f:
                return f.read()
        except Exception as e:  # missing file, bad CRC, bad compressed data, ...
            raise _err(self.label(rel), 'cannot read', e) from None

    def image(self, rel):
        return _decode(self.read(rel), self.label(rel))

    def size(self, rel):
        return self._zipfile().getinfo(rel).file_size if self.is_zip else os.path.getsize(self.label(rel))

    def require_files(self):
        if not self.files:
            raise _err(self.root, f"no images in it (looked for {', '.join(IMAGE_EXTS)})")
        return self.files


def list_images(root):
    """Sorted image files (IMAGE_EXTS, recursive, hidden files skipped) of a folder or a .zip, as
    paths that load_image accepts (zip members as ZIP/member). A single image file gives [root]."""
    root = os.fspath(root)
    if os.path.isfile(root) and _is_image(os.path.basename(root)):
        return [root]
    store = _Store(root)
    return [store.label(n) for n in store.require_files()]


def load_image(path_or_file, name=None):
    """A path (also ZIP/member), bytes, or a binary file object -> (3, H, W) float in [-1, 1]."""
    if isinstance(path_or_file, (str, os.PathLike)):
        path = os.fspath(path_or_file)
        name, head, tail = name or path, path, []
        while not os.path.exists(head) and os.path.basename(head):  # ZIP/member: find the zip
            head, t = os.path.split(head)
            tail.insert(0, t)
        try:
            if not tail:
                with open(path, 'rb') as f:
                    data = f.read()
            elif os.path.isfile(head):
                with zipfile.ZipFile(head) as z:
                    data = z.read('/'.join(tail))
            else:
                raise FileNotFoundError
        except (FileNotFoundError, KeyError):
            raise _err(name, 'no such file') from None
        except Exception as e:
            raise _err(name, 'cannot read', e) from None
    else:  # bytes, or a binary file object
        is_bytes = isinstance(path_or_file, (bytes, bytearray))
        data = bytes(path_or_file) if is_bytes else path_or_file.read()
        name = name or ('<bytes>' if is_bytes else getattr(path_or_file, 'name', '<file>'))
    return _to_tensor(_decode(data, name))

# ------------------------------------------------------------ data sets


def split_root(root):
    """(ROOT/train, ROOT/val) when those folders exist (prepare --val N makes them), else (ROOT, None)."""
    train, val = os.path.join(root, 'train'), os.path.join(root, 'val')
    return (train if os.path.isdir(train) else root), (val if os.path.isdir(val) else None)


def _find_layout(store, hr_dir):
    """The prefix ('' or 'name/') under which store holds hr_dir: at the top or one level down."""
    if hr_dir in store.dirs:
        return ''
    found = sorted(d[:-len(hr_dir)] for d in store.dirs if d.count('/') == 1 and d.endswith('/' + hr_dir))
    if len(found) > 1:
        raise _err(store.root, f"several {hr_dir}/ folders ({', '.join(p + hr_dir for p in found)}); "
                   "pass the folder of one of them (see split_root)")
    if not found:
        near = sorted(d for d in store.dirs if re.fullmatch(r'([^/]+/)?[hls]r_\d+(_\d+)?', d))
        hint = f"; found {', '.join(near)}" if near else ''
        raise _err(store.root, f"no {hr_dir}/ folder at the top or one level down{hint}")
    return found[0]


class SRPairs(torch.utils.data.Dataset):
    """SR3 / DREAM pairs: items dict(hr=(3,hr,hr), lr=(3,lr,lr), sr=(3,hr,hr), name=str) in [-1, 1].
    sr is read from sr_{lr}_{hr}/ or, without that folder, computed as the bicubic up of lr."""

    def __init__(self, root, lr, hr):
        if not 0 < lr < hr:
            raise DataError(f"data: need 0 < lr < hr, got lr={lr}, hr={hr}")
        self.root, self.lr, self.hr, self.store = os.fspath(root), lr, hr, _Store(root)
        base = _find_layout(self.store, f'hr_{hr}')
        self.dirs = dict(hr=f'{base}hr_{hr}', lr=f'{base}lr_{lr}', sr=f'{base}sr_{lr}_{hr}')
        names = {k: self.store.listdir(d) for k, d in self.dirs.items()}
        for k in ('hr', 'lr'):
            if not names[k]:
                raise _err(self.store.label(self.dirs[k]), 'no images in it (or no such folder)')
        for a, b in (('lr', 'hr'), ('hr', 'lr')) + ((('hr', 'sr'),) if names['sr'] else ()):
            alone = sorted(names[a] - names[b])
            if alone:
                raise _err(self.store.label(f'{self.dirs[a]}/{alone[0]}'),
                           f"no file of that name in {self.dirs[b]}/ ({len(alone)} unpaired)")
        self.names, self.has_sr = sorted(names['hr']), bool(names['sr'])

    def __len__(self):
        return len(self.names)

    def _load(self, kind, name, size):
        rel = f'{self.dirs[kind]}/{name}'
        x = _to_tensor(self.store.image(rel))
        if x.shape[1:] != (size, size):
            raise _err(self.store.label(rel), f"expected {size}x{size}, got {x.shape[2]}x{x.shape[1]}")
        return x

    def __getitem__(self, i):
        name = self.names[i]
        hr, lr = self._load('hr', name, self.hr), self._load('lr', name, self.lr)
        sr = self._load('sr', name, self.hr) if self.has_sr else resize(lr, self.hr)
        return dict(hr=hr, lr=lr, sr=sr, name=name)


class ImageFolder(torch.utils.data.Dataset):
    """Any images of a folder or .zip (recursive), centre-cropped to a square and bicubic-resized
    to resolution. Items: dict(image=(3, R, R) in [-1, 1], name=relative path)."""

    def __init__(self, root, resolution):
        self.root, self.resolution, self.store = os.fspath(root), resolution, _Store(root)
        self.store.require_files()

    def __len__(self):
        return len(self.store.files)

    def __getitem__(self, i):
        rel = self.store.files[i]
        return dict(image=_to_tensor(_square(self.store.image(rel), self.resolution)), name=rel)

def _files(dataset):
    """{name: relative path in its store} of the images a data set trains on (SR pairs: their hr_H/ files)."""
    if isinstance(dataset, SRPairs):
        return {name: f"{dataset.dirs['hr']}/{name}" for name in dataset.names}
    return {rel: rel for rel in dataset.store.files}


def check_disjoint(train, held_out, same_source):
    """Refuse a training set that shares an image with its held-out set: the same file content (sha256, compared
    where the sizes match) always, and the same file name too when both come from one source (DATA/train, DATA/val).
    Raises DataError naming one shared file."""
    train_files, held_files = _files(train), _files(held_out)
    if same_source:
        shared = sorted(set(train_files) & set(held_files))
        if shared:
            raise _err(train.store.label(train_files[shared[0]]), f'also in the held-out set {held_out.root} '
                       f'({len(shared)} shared names): re-run prepare with --overwrite, or remove them')
    held_by_size = {}
    for rel in held_files.values():
        held_by_size.setdefault(held_out.store.size(rel), []).append(rel)
    held_hashes = {}
    for rel in train_files.values():
        for other in held_by_size.get(train.store.size(rel), []):
            if other not in held_hashes:
                held_hashes[other] = hashlib.sha256(held_out.store.read(other)).hexdigest()
            if hashlib.sha256(train.store.read(rel)).hexdigest() == held_hashes[other]:
                raise _err(train.store.label(rel), f'same content as {held_out.store.label(other)} of the held-out '
                           'set: a training set must not hold held-out images')

# ------------------------------------------------------------ prepare: any images -> the SR layout


def prepare(src, dst, lr, hr, val=0, progress=True, skip_bad=False, overwrite=False):
    """Build dst/{hr_H, lr_L, sr_L_H}/STEM.png from every image under src (folder or zip).
    val=N > 0: the first N sorted files go to dst/val/, the rest to dst/train/.
    A non-empty dst is refused unless overwrite, which clears it first (writing over an old split with another
    --val would leave held-out images in train/). Returns the number of images written."""
    if not 0 < lr < hr:
        raise DataError(f"data: need 0 < lr < hr, got lr={lr}, hr={hr}")
    store = _Store(src)
    dst_abs = os.path.abspath(dst) + os.sep  # if dst is inside src, do not read our own output
    if (os.path.abspath(store.root) + os.sep).startswith(dst_abs):
        raise _err(dst, f'holds the source {store.root}: choose a destination outside it')
    files = [f for f in store.require_files() if not os.path.abspath(store.label(f)).startswith(dst_abs)]
    if not 0 <= val < len(files):
        raise _err(store.root, f"--val {val} must be >= 0 and less than the {len(files)} images")
    stems = {}  # outputs are STEM.png: two sources with one stem would collide
    for f in files:
        first = stems.setdefault(os.path.splitext(f.rsplit('/', 1)[-1])[0], f)
        if first != f:
            raise _err(store.label(f), f"same file stem as {store.label(first)}")
    if os.path.isdir(dst) and os.listdir(dst):
        if not overwrite:
            raise _err(dst, 'not empty: pass --overwrite to clear it first, or choose another destination')
        shutil.rmtree(dst)
    stem_of, written = {f: s for s, f in stems.items()}, 0
    for split, group in [('val', files[:val]), ('train', files[val:])] if val else [('', files)]:
        dirs = [os.path.join(dst, split, d) for d in (f'hr_{hr}', f'lr_{lr}', f'sr_{lr}_{hr}')]
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        for f in tqdm(group, desc=f"prepare {split or dst}", unit='img', disable=not progress):
            try:
                img_hr = _square(store.image(f), hr)
            except DataError as e:
                if not skip_bad:
                    raise
                print(f"warning: skipped: {e}", file=sys.stderr)
                continue
            img_lr = img_hr.resize((lr, lr), Image.BICUBIC)
            for d, img in zip(dirs, (img_hr, img_lr, img_lr.resize((hr, hr), Image.BICUBIC))):
                img.save(os.path.join(d, stem_of[f] + '.png'))
            written += 1
    if not written:
        raise _err(store.root, 'no readable images in it')
    return written

# ------------------------------------------------------------ download (the fetching itself: download.py)


def download(name='celebahq_16_128', dest=None, url=None, progress=True):
    """Fetch a data set zip (default DREAM's 100 CelebA-HQ validation faces) into dest (default the cache,
    $DREAM_RELAY_CACHE or ~/.cache/dream-relay) as NAME.zip and return its path; $DREAM_RELAY_MIRROR/NAME.zip
    replaces the default URL. A valid file already there is returned as is; a failed download leaves nothing."""
    if url is None and name not in URLS:
        raise DataError(f"data: unknown data set {name!r} (known: {', '.join(URLS)}, ffhq128, celebahq256); "
                        "pass --url URL")
    url = fetch.source_url(URLS.get(name), name + '.zip', url)
    return fetch.fetch_small_zip(url, name, os.path.expanduser(dest or fetch.cache_dir()), progress)

# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description='prepare or download super-resolution data')
    sub = p.add_subparsers(dest='cmd', required=True)
    pp = sub.add_parser('prepare', help='build hr_H/ lr_L/ sr_L_H/ from any image folder or zip')
    pp.add_argument('src')
    pp.add_argument('dst')
    pp.add_argument('--lr', type=int, default=16)
    pp.add_argument('--hr', type=int, default=128)
    pp.add_argument('--val', type=int, default=0, help='first N sorted files to DST/val, the rest to DST/train')
    pp.add_argument('--skip-bad', action='store_true', help='warn about unreadable images and go on')
    pp.add_argument('--overwrite', action='store_true', help='clear a non-empty DST first')
    pd = sub.add_parser('download', help="fetch a data set: celebahq_16_128 (DREAM's 100 validation faces, the "
                                         'default), ffhq128 (FFHQ thumbnails as the SR layout), celebahq256')
    pd.add_argument('name', nargs='?', default='celebahq_16_128',
                    help="celebahq_16_128 (default: DREAM's held-out faces), ffhq128, celebahq256")
    pd.add_argument('--dest', default=None, help='celebahq_16_128: folder for its zip (default the cache, '
                    '$DREAM_RELAY_CACHE or ~/.cache/dream-relay); ffhq128: default data/ffhq128_LR_HR; '
                    'celebahq256: default data/celebahq256')
    pd.add_argument('--url', default=None, help=f'the file to fetch (default: ${fetch.MIRROR_ENV}/FILE, '
                    'else the pinned source)')
    pd.add_argument('--n', type=int, default=None, help='ffhq128, celebahq256: only the first N images')
    pd.add_argument('--lr', type=int, default=16, help='ffhq128: low resolution')
    pd.add_argument('--hr', type=int, default=128, help='ffhq128: high resolution')
    for q in (pp, pd):
        q.add_argument('--quiet', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    try:
        if args.cmd == 'prepare':
            n = prepare(args.src, args.dst, args.lr, args.hr, args.val, not args.quiet, args.skip_bad,
                        args.overwrite)
            print(f"wrote {n} images to {args.dst}")
        elif args.name == 'ffhq128':
            print(fetch.ffhq128(args.dest, args.n, args.lr, args.hr, args.url, progress=not args.quiet))
        elif args.name == 'celebahq256':
            print(fetch.celebahq256(args.dest, args.n, args.url, progress=not args.quiet))
        else:
            print(download(args.name, dest=args.dest, url=args.url, progress=not args.quiet))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
