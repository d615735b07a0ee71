"""docs/where.md names real places: every `file.py:name` it cites is a top-level function, class or
assignment of that file (`file.py:Class.method` a method of that class), and every test it names exists."""
import ast
import os
import re


def top_level_names(path):
    names = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_every_cited_name_exists(root):
    text = open(os.path.join(root, "docs", "where.md")).read()
    cited = re.findall(r"`([\w/]+\.py):([\w.]+)`", text)
    assert len(cited) > 30, "the page cites its places as `file.py:name`"
    for path, name in cited:
        assert name in top_level_names(os.path.join(root, path)), f"docs/where.md cites {path}:{name}, which does not exist"


def test_every_cited_test_exists(root):
    text = open(os.path.join(root, "docs", "where.md")).read()
    tests = set(re.findall(r"\b(test_\w+)\b", text))
    everything = "".join(open(os.path.join(root, "tests", f)).read() for f in os.listdir(os.path.join(root, "tests"))
                         if f.endswith(".py"))
    for name in tests:
        assert re.search(rf"\bdef {name}\b|\b{name}\.py\b", everything) or os.path.exists(
            os.path.join(root, "tests", name + ".py")), f"docs/where.md names {name}, which does not exist"
