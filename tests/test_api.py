"""The public API module stays a facade: the library never imports it."""

import ast

from helpers import ROOT


def test_no_library_module_imports_the_public_api_module():
    importers = []
    for path in sorted((ROOT / "lwm_core").rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name == "lwm_core":
            continue  # the package re-exports it, lazily
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module == "lwm_core.api" or "lwm_core.api" in names or (module == "lwm_core" and "api" in names):
                importers.append(str(path.relative_to(ROOT)))
            if module == "lwm_core" and {"LWM", "load_model"} & set(names):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []
