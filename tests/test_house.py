"""The house (DESIGN.md): three floors, no command line imports another, no import cycle.

Reads the imports of every top-level .py file with ast (function-level imports included), so a lazy
`import train` inside a function counts as much as one at the top."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# floor 1: the math and the data, each a leaf, importing at most what its row of DESIGN.md says
FLOOR_1 = {'unet': set(), 'dream': set(), 'block_noise': set(), 'remote': set(), 'download': {'remote'},
           'data': {'download'}, 'metrics': {'data'}}
# floor 2: the library (may import floors 1 and 2); diffusion and relay have their own rows
FLOOR_2 = {'diffusion', 'relay', 'tasks', 'checkpoint', 'runtime', 'plots', 'trainset'}
FLOOR_2_ROWS = {'diffusion': {'dream'}, 'relay': {'block_noise', 'dream'}}
# floor 3: the command lines (may import floors 1 and 2, never each other)
FLOOR_3 = {'train', 'sample', 'evaluate', 'bench'}


def project_modules():
    return {f[:-3] for f in os.listdir(ROOT) if f.endswith('.py')}


def imports_of(name, modules):
    """The project modules that ROOT/name.py imports anywhere in the file."""
    with open(os.path.join(ROOT, name + '.py')) as f:
        tree = ast.parse(f.read(), name + '.py')
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split('.')[0])
    return found & modules


def import_graph():
    modules = project_modules()
    return {m: imports_of(m, modules) for m in modules}


def test_every_top_level_file_lives_on_a_floor():
    placed = set(FLOOR_1) | FLOOR_2 | FLOOR_3
    assert project_modules() - placed == set(), 'place the new file on a floor (DESIGN.md, "The house")'


def test_floor_1_imports_only_what_its_row_allows():
    graph = import_graph()
    for name, allowed in FLOOR_1.items():
        if name in graph:
            assert graph[name] <= allowed, (name, graph[name] - allowed)


def test_floor_2_imports_floors_1_and_2_only():
    graph = import_graph()
    for name in FLOOR_2 & set(graph):
        allowed = FLOOR_2_ROWS.get(name, set(FLOOR_1) | FLOOR_2)
        assert graph[name] <= allowed, (name, graph[name] - allowed)


def test_no_command_line_imports_another():
    graph = import_graph()
    for name in FLOOR_3 & set(graph):
        assert not graph[name] & FLOOR_3, (name, graph[name] & FLOOR_3)
        assert graph[name] <= set(FLOOR_1) | FLOOR_2, (name, graph[name])


def find_cycle(graph):
    """A list of modules forming an import cycle, or None (depth-first search, colouring the nodes)."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, find_cycle(import_graph())


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None
