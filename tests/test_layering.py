"""Dependencies one way inside ``backbones/`` (issue 26): no import circle, counting the imports inside functions,
and every module imports on its own in a fresh interpreter."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'backbones'


def _modules():
    """``{dotted module name: file path}`` of every module of the package (``__init__`` files name the package)."""
    mods = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                mods[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return mods


def import_graph():
    """Edges ``module -> modules of the package it imports``, at the top level and inside functions alike.

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``; relative imports are
    resolved against the importing module.  Returns ``{module: set(modules)}``.
    """
    mods = _modules()
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = mod if path.endswith('__init__.py') else mod.rpartition('.')[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')[:len(package.split('.')) - node.level + 1]
                    src = '.'.join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ''
                targets = [f'{src}.{a.name}' if f'{src}.{a.name}' in mods else src for a in node.names]
            else:
                continue
            for t in targets:
                while t not in mods and '.' in t:
                    t = t.rpartition('.')[0]
                if t in mods and t != mod:
                    edges[mod].add(t)
    return edges


def circles(edges):
    """Strongly connected components with more than one node (each an import circle), sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def _subpackage(mod):
    """``backbones.training.calibration`` -> ``backbones.training``; a module at the root stays itself."""
    parts = mod.split('.')
    return '.'.join(parts[:2])


def test_graph_reader_sees_function_level_imports_and_circles():
    """The reader itself: an import inside a function is an edge, and a two-module circle is found."""
    edges = import_graph()
    assert 'backbones.training.distributed' in edges['backbones.training.calibration']  # a top-level import
    assert 'backbones.sact' in edges['backbones.training.ponder']  # imported inside a function
    assert circles({'a': {'b'}, 'b': {'a', 'c'}, 'c': set()}) == [['a', 'b']]


def test_no_import_circle_between_modules_or_subpackages():
    """The dependency graph of ``backbones/`` runs one way, imports inside functions included: between modules and
    between its subpackages (``pretrained/`` above the models and ``_registry``; ``training/`` above the methods)."""
    edges = import_graph()
    assert not circles(edges), f'import circles between modules: {circles(edges)}'
    pkg_edges = {}
    for mod, targets in edges.items():
        if mod == PACKAGE:  # the package's __init__ re-exports everything: it sits on top, nothing imports it
            continue
        src = _subpackage(mod)
        pkg_edges.setdefault(src, set()).update(_subpackage(t) for t in targets if _subpackage(t) != src)
    for targets in list(pkg_edges.values()):
        for t in targets:
            pkg_edges.setdefault(t, set())
    assert not circles(pkg_edges), f'import circles between subpackages: {circles(pkg_edges)}'
    assert not any(PACKAGE in targets for mod, targets in edges.items() if mod != PACKAGE), \
        [mod for mod, targets in edges.items() if PACKAGE in targets]


@pytest.mark.slow  # a new Python process
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """Each module of ``backbones/`` imported first, in an interpreter with no module of the package loaded (one
    process: between modules the package is removed from ``sys.modules``, torch stays)."""
    mods = sorted(_modules())
    code = ('import importlib, sys, traceback, torch\n'
            f'failed = []\nfor m in {mods!r}:\n'
            f'    for k in [k for k in sys.modules if k == {PACKAGE!r} or k.startswith({PACKAGE + "."!r})]:\n'
            '        del sys.modules[k]\n'
            '    try:\n'
            '        importlib.import_module(m)\n'
            '    except Exception:\n'
            '        failed.append((m, traceback.format_exc(limit=-3)))\n'
            'print(len(failed))\n'
            'for m, tb in failed:\n'
            '    print(m, tb)\n')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split('\n', 1)[0] == '0', r.stdout[-5000:]
    assert len(mods) > 50


@pytest.mark.parametrize('module, name, new', [
    ('backbones.slimmable', 'calibrate_bn', 'backbones.training.calibrate_bn'),
    ('backbones.checkpoint', 'read_checkpoint', 'backbones.pretrained.read_checkpoint'),
    ('backbones.checkpoint', 'load_backbone_state', 'backbones.pretrained.load_backbone_state'),
])
def test_moved_names_say_where_they_went(module, name, new):
    """Functions moved up a layer to break an import circle: the old import raises naming the new place, and the
    new place holds the function."""
    import importlib
    with pytest.raises(ImportError, match=new.replace('.', r'\.')):
        exec(f'from {module} import {name}', {})
    mod, _, attr = new.rpartition('.')
    assert callable(getattr(importlib.import_module(mod), attr))
