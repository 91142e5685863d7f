"""The README and docs/ hold together: every relative link resolves, and every file under results/ and experiments/
is cited (its path appears) in the README or a docs page, so nothing there is orphaned."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def pages():
    """README.md and docs/*.md, as paths relative to the repository root."""
    docs = sorted(os.path.join('docs', f) for f in os.listdir(os.path.join(ROOT, 'docs')) if f.endswith('.md'))
    return ['README.md'] + docs


def read(page):
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def relative_links(text):
    """Markdown link and image targets that point into the repository (no scheme, no pure #anchor), #fragment off."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue
        targets.append(target.split('#')[0])
    return targets


def files_under(folder):
    """Every file under ROOT/folder, relative to ROOT (caches and compiled files aside)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = [d for d in dirnames if d != '__pycache__' and not d.startswith('.')]
        for name in filenames:
            if name.endswith('.pyc') or name.startswith('.'):
                continue
            out.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return sorted(out)


def test_the_link_finder_reads_links_and_images_and_skips_the_web():
    text = ('see [a](docs/a.md#x), ![pic](../results/p.png) and [web](https://example.org/x.md), '
            '[anchor](#top), [mail](mailto:x@y.z), [t](b.md "title")')
    assert relative_links(text) == ['docs/a.md', '../results/p.png', 'b.md']


@pytest.mark.parametrize('page', pages())
def test_every_relative_link_resolves(page):
    base = os.path.dirname(os.path.join(ROOT, page))
    missing = [t for t in relative_links(read(page)) if not os.path.exists(os.path.normpath(os.path.join(base, t)))]
    assert not missing, f'{page}: links to missing files {missing}'


def test_the_readme_is_at_most_250_lines():
    assert len(read('README.md').splitlines()) <= 250


def test_every_docs_page_is_linked_from_the_readme():
    readme = read('README.md')
    unlinked = [p for p in pages()[1:] if f'({p})' not in readme]
    assert not unlinked, f'docs pages the README does not link: {unlinked}'


@pytest.mark.parametrize('folder', ['results', 'experiments'])
def test_every_file_is_cited_by_the_readme_or_a_docs_page(folder):
    text = '\n'.join(read(p) for p in pages())
    files = files_under(folder)
    assert files, f'{folder}/ is empty'
    orphans = [f for f in files if f.replace(os.sep, '/') not in text]
    assert not orphans, f'files nothing cites (cite them on a docs page or delete them): {orphans}'


@pytest.mark.parametrize('page', pages())
def test_no_page_keeps_a_note_to_the_maintainers(page):
    """The pages a reader sees hold results, not reminders: no '<!-- lead:' placeholder survives a merge."""
    assert '<!-- lead:' not in read(page)
