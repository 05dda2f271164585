"""The package's shape: no import cycles (every import statement counts), a config that depends on constants and
ranges only, an ``import lkd_hf`` that leaves the Trainer stack unimported until a trainer-side name is used, only the
Distiller telling the student wrappers apart, hub modules free of the trainer side, and no module over 600 lines."""

import ast
import os
import subprocess
import sys

import lkd_hf

PACKAGE_DIR = os.path.dirname(lkd_hf.__file__)


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, from every import statement (module level, in functions, under
    ``TYPE_CHECKING``). Importing ``a.b.c`` also imports the package ``a.b``, unless it is a package of the importing
    module itself (its import runs them first; the root package counts only where a module imports it by name)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path).read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target not in modules:
                    continue
                graph[name].add(target)
                parts = target.split(".")
                own_packages = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
                graph[name].update(
                    ".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) not in own_packages
                )
        graph[name].discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_function_level_and_package_cycles():
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert _cycles(graph) == [["p.a", "p.b"]]
    assert _cycles({"p": set(), "p.a": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert "lkd_hf.trainer" in graph["lkd_hf"] or "lkd_hf.hub" in graph["lkd_hf"]  # the graph is read
    assert _cycles(graph) == []


def test_the_config_depends_on_constants_and_ranges_only_which_import_nothing_of_the_package():
    graph = _import_graph()
    assert graph["lkd_hf.config"] == {"lkd_hf.constants", "lkd_hf.ranges"}
    assert graph["lkd_hf.constants"] == graph["lkd_hf.ranges"] == set()


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return set(out.stdout.split())


def test_import_and_learned_losses_leave_the_trainer_stack_unimported():
    modules = _imported_after("import lkd_hf\nlkd_hf.LearnedLoss, lkd_hf.LogitLossNet, lkd_hf.available_losses()")
    assert "lkd_hf.hub" in modules
    assert not {"transformers.trainer", "datasets", "evaluate", "lkd_hf.trainer"} & modules
    assert "transformers.trainer" in _imported_after("import lkd_hf\nlkd_hf.LKDTrainer")


def test_file_names_kept_outside_the_trainer_stack_match_transformers():
    import transformers.trainer

    from lkd_hf.resume import checks as resume_checks

    assert resume_checks.TRAINER_STATE_NAME == transformers.trainer.TRAINER_STATE_NAME
    assert resume_checks.OPTIMIZER_NAME == transformers.trainer.OPTIMIZER_NAME
    assert resume_checks.SCHEDULER_NAME == transformers.trainer.SCHEDULER_NAME


WRAPPER_TYPES = {"StudentPopulation", "StudentWithConnectors"}
HUB_MODULES = ("lkd_hf.hub", "lkd_hf.learned_loss_config", "lkd_hf.model_card")
TRAINER_SIDE = ("lkd_hf.trainer", "lkd_hf.distiller", "lkd_hf.features", "lkd_hf.population", "lkd_hf.resume",
                "lkd_hf.objective", "lkd_hf.meta")


def _wrapper_type_tests(path: str) -> list[int]:
    """Lines of ``isinstance`` calls on a student wrapper type (the population, the student with connectors)."""
    lines = []
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if names & WRAPPER_TYPES:
                lines.append(node.lineno)
    return lines


def test_the_layout_rules_see_what_they_look_for(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("isinstance(model, StudentPopulation)\nisinstance(model, (int, features.StudentWithConnectors))\n"
                      "isinstance(model, nn.Module)\n")
    assert _wrapper_type_tests(str(module)) == [1, 2]


def test_only_the_distiller_tells_the_student_wrappers_apart():
    found = {name: lines for name, path in _modules().items() if name != "lkd_hf.distiller"
             if (lines := _wrapper_type_tests(path))}
    assert found == {}


def test_the_hub_modules_import_nothing_of_the_trainer_side():
    graph = _import_graph()
    for module in HUB_MODULES:
        reached, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - reached:
                reached.add(target)
                todo.append(target)
        assert not {m for m in reached if m.startswith(TRAINER_SIDE)}, module


def test_no_module_is_over_600_lines():
    lengths = {}
    for name, path in _modules().items():
        with open(path) as f:
            lengths[name] = sum(1 for _ in f)
    assert "lkd_hf.trainer" in lengths and {name: n for name, n in lengths.items() if n > 600} == {}


def test_the_config_lists_every_field_of_its_own_and_keeps_help_short():
    import dataclasses
    import re

    from transformers import TrainingArguments

    from lkd_hf import LKDConfig

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = [f for f in dataclasses.fields(LKDConfig) if f.name not in inherited]
    documented = LKDConfig.__doc__.split("Args:")[1]
    assert len(own) > 50 and [f.name for f in own if not re.search(rf"\b{f.name}\b", documented)] == []
    sentences = {f.name: len(re.findall(r"[a-z0-9)'\]][.!?](?:\s|$)", f.metadata["help"].replace("e.g.", "eg")))
                 for f in own}
    assert {name: n for name, n in sentences.items() if n > 2} == {}


def test_the_dependency_floor_tests_named_in_the_makefile_exist():
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "Makefile"), encoding="utf-8") as f:
        block = re.search(r"^FLOORS_TESTS \?=(.*?)(?<!\\)\n", f.read(), re.M | re.S).group(1)
    names = re.findall(r"(tests/\S+\.py)::(\w+)", block)
    assert len(names) >= 5
    for path, test in names:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            assert re.search(rf"^def {test}\(", f.read(), re.M), f"{path}::{test} named by FLOORS_TESTS does not exist"


def test_every_public_name_resolves():
    import lkd_hf

    missing = [name for name in lkd_hf.__all__ if not hasattr(lkd_hf, name)]
    assert not missing, f"lkd_hf.__all__ names what lkd_hf does not give: {missing}"
