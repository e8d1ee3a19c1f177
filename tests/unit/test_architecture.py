"""The package's shape: imports go one way, with no cycle, and importing does no work.

runtime -> request, inputs, engine, delivery -> config, errors; the studio (the web page's server)
-> request, config, errors. The engine may read the request's
constants and sampler table (the plan is built from a request), but never imports runpod,
delivery or runtime: progress and previews leave it through callbacks. Imports inside
functions count.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "sdxl_worker"

# What each part may import from the package. Everything else is forbidden.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "request": {"config", "errors"},
    "inputs": {"config", "errors"},
    "engine": {"config", "errors", "request"},
    "delivery": {"config", "errors"},
    "runtime": {"config", "errors", "request", "inputs", "engine", "delivery"},
    "testing": {"config", "errors", "request", "inputs", "engine", "delivery", "runtime"},
    # The page's server: it gets its jobs' source from handler.py (the worker's RunPod handler, or
    # a RunPod endpoint), so it never loads models itself.
    "studio": {"config", "errors", "request"},
    # The HTTP server: the queue worker's peer, running the same jobs through the runtime's Runner.
    "api": {"config", "errors", "request", "inputs", "engine", "delivery", "runtime"},
}
FORBIDDEN_LIBRARIES = {"engine": {"runpod"}, "request": {"runpod", "torch", "diffusers"},
                       "inputs": {"runpod"}, "delivery": {"runpod", "torch", "diffusers"},
                       "studio": {"runpod", "torch", "diffusers"}, "api": {"runpod", "torch", "diffusers"}}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, as absolute names."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {imported for imported in _imports(path, name) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_every_module_lives_in_a_known_part():
    assert {_part(name) for name in _modules()} - {""} <= set(ALLOWED)


def test_imports_go_one_way(graph):
    wrong = [f"{module} imports {imported}" for module, imports in graph.items() for imported in imports
             if _part(imported) and _part(module) and _part(imported) != _part(module)
             and _part(imported) not in ALLOWED[_part(module)]]
    assert wrong == []


def test_nothing_in_the_worker_imports_the_testing_helpers(graph):
    assert [m for m, imports in graph.items() if _part(m) != "testing" and any(_part(i) == "testing" for i in imports)] == []


def test_no_part_imports_the_libraries_it_must_not():
    wrong = []
    for name, path in _modules().items():
        banned = FORBIDDEN_LIBRARIES.get(_part(name), set())
        wrong += [f"{name} imports {lib}" for lib in _imports(path, name) if lib.split(".")[0] in banned]
    assert wrong == []


def test_only_the_configuration_reads_the_environment():
    """Settings are read once, by config.py, and handed to what they configure: no other module of
    the worker reads os.environ (``testing`` builds stand-ins, and may)."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "config.py" or "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("environ", "getenv", "environb"):
                readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert readers == [], f"these read the environment; read it in config.py instead: {readers}"


# The process's entry points, where the configuration is read; everything else is handed its part.
READS_THE_CONFIGURATION = {"runtime/startup.py", "runtime/start_files.py", "api/server.py"}
CONFIGURATION_READERS = {"load", "current", "models", "image_models", "speed", "fetch", "loras", "jobs", "storage", "runtime",
                         "studio", "build", "server"}


def test_settings_are_handed_in_not_looked_up():
    """Only start-up (and a command's own main) calls the configuration's readers; a part called
    during a job that looked its settings up would see the environment as it is then."""
    lookups = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE))
        if where in READS_THE_CONFIGURATION or where == "config.py" or where.startswith("testing/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "config"
                    and node.func.attr in CONFIGURATION_READERS):
                lookups.append(f"{where}:{node.lineno} config.{node.func.attr}()")
    assert lookups == [], f"settings looked up instead of handed in: {lookups}"


def test_there_is_no_import_cycle(graph):
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            # A package's __init__ is imported on the way to its modules: not an edge of its own.
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_importing_any_module_does_no_work(tmp_path):
    """No process started, no global setting changed, no model loaded; the request package without torch."""
    modules = sorted(name for name in _modules() if _part(name) not in ("testing",))
    probe = f"""
import os, subprocess, sys, threading
import PIL.Image
pixels_before, environ_before = PIL.Image.MAX_IMAGE_PIXELS, dict(os.environ)
import sdxl_worker.request.schema, sdxl_worker.request.dialects, sdxl_worker.request.samplers
assert "torch" not in sys.modules, "the request package imported torch"
# The libraries first: what they start or change when imported is theirs, not the worker's.
import torch, diffusers, transformers, compel, peft, boto3, runpod, runpod.serverless, cv2, imwatermark
environ_before = dict(os.environ)
threads_before = threading.active_count()
started = []
original = subprocess.Popen.__init__
def spy(self, *args, **kwargs):
    started.append(args[0] if args else kwargs.get("args"))
    return original(self, *args, **kwargs)
subprocess.Popen.__init__ = spy
import handler
for name in {modules!r}:
    __import__(name)
assert started == [], started
assert PIL.Image.MAX_IMAGE_PIXELS == pixels_before, "an import changed Pillow's size limit"
changed = {{k for k in set(os.environ) | set(environ_before) if os.environ.get(k) != environ_before.get(k)}}
assert not changed, changed
assert threading.active_count() == threads_before, [t.name for t in threading.enumerate()]
print("ok")
"""
    # A recorded start-files list: a prefetch helper started at import would have something to read.
    listed = tmp_path / "start-files.txt"
    listed.write_text(sys.executable + "\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=PACKAGE.parents[1], capture_output=True, text=True,
                          timeout=240, env=dict(os.environ, START_FILES=str(listed), PREFETCH="1"))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
