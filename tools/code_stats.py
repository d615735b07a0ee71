"""Size of each top-level module: lines, argparse flags, comment lines, its two longest functions (docs/index.md)."""
import ast
import glob

files = [f for f in sorted(glob.glob("*.py"))]
for f in files:
    src = open(f).read()
    tree = ast.parse(src)
    n_lines = len(src.splitlines())
    argp = src.count("add_argument(")
    longest = sorted(((n.end_lineno - n.lineno + 1, n.name, bool(ast.get_docstring(n))) for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef,))), reverse=True)[:2]
    comments = sum(1 for l in src.splitlines() if l.strip().startswith("#") or "  # " in l)
    print(f"{f:14s} {n_lines:5d} lines {argp:3d} add_argument  comment lines {comments:3d}  longest {longest}")
