"""The mutants of one module: small, plausible wrong edits of its syntax tree.

Each mutation site gets an index in a fixed traversal order, so a mutant is named by
``(module, index)`` and rebuilt on demand from the pristine source. What is mutated:

* comparisons: each operator negated (``<`` → ``>=``, ``in`` → ``not in``, ``is`` →
  ``is not``) and, for orderings, moved across its boundary (``<`` → ``<=``);
* conditions of ``if``, ``while``, conditional expressions and comprehension filters,
  negated (unless the condition is one comparison: negating its operator is the same);
* ``and`` ↔ ``or``;
* ``raise`` removed (replaced by ``pass``);
* ``return X`` → ``return None``, and ``return True`` ↔ ``return False``;
* integer and float constants shifted by one, boolean constants flipped.

Not mutated, because no test could tell or none should: decorators (``frozen=``,
``slots=``, ``lru_cache`` sizes), annotations, docstrings and other strings, ``assert``
statements (they only narrow types for mypy) and the arguments of logging calls.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
from collections.abc import Callable

_NEGATED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BOUNDARY: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}
_LOGGERS = frozenset({"log", "logger", "logging"})


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One mutation of a module: where it is and what it changes."""

    index: int
    line: int
    scope: str  # the qualified name of the enclosing function or class, or "<module>"
    before: str
    after: str

    @property
    def label(self) -> str:
        """``scope: before → after``, stable while the code around it moves."""
        return f"{self.scope}: `{self.before}` → `{self.after}`"


def _negate(test: ast.expr) -> ast.expr:
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand
    return ast.UnaryOp(op=ast.Not(), operand=test)


def _negatable_comparison(test: ast.expr) -> bool:
    return isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _NEGATED


def _is_logging_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in _LOGGERS
    )


class _Mutator(ast.NodeTransformer):
    """Walk the tree numbering mutation sites; with ``target`` set, apply that one site."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.found: list[Mutant] = []
        self._scope: list[str] = []

    # -- sites ---------------------------------------------------------------------------

    def _site(self, node: ast.AST, original: ast.AST, build: Callable[[], ast.AST]) -> ast.AST:
        """Record one site; return the mutated node when it is the target."""
        index = len(self.found)
        mutated = build()
        self.found.append(
            Mutant(
                index=index,
                line=getattr(original, "lineno", 0),
                scope=".".join(self._scope) or "<module>",
                before=ast.unparse(original),
                after=ast.unparse(mutated) if not isinstance(mutated, ast.Pass) else "pass",
            )
        )
        if index == self.target:
            return ast.copy_location(mutated, node)
        return node

    # -- scopes and places never mutated ---------------------------------------------------

    def _visit_scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
        self._scope.append(node.name)
        if isinstance(node, ast.ClassDef):
            fields: tuple[str, ...] = ("bases", "keywords", "body")
        else:
            fields = ("args", "body")
        for name in fields:
            value = getattr(node, name)
            if isinstance(value, list):
                setattr(node, name, [self._visit_item(v) for v in value])
            else:
                setattr(node, name, self.visit(value))
        self._scope.pop()
        return node

    def _visit_item(self, node: ast.AST) -> ast.AST:
        result = self.visit(node)
        assert isinstance(result, ast.AST)
        return result

    visit_FunctionDef = _visit_scoped
    visit_AsyncFunctionDef = _visit_scoped
    visit_ClassDef = _visit_scoped

    def visit_arg(self, node: ast.arg) -> ast.AST:
        return node  # annotations only

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _is_logging_call(node):
            return node
        return self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if isinstance(node.value, ast.Constant):
            return node  # a docstring
        return self.generic_visit(node)

    # -- the mutations -----------------------------------------------------------------------

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        result: ast.AST = node
        for i, op in enumerate(node.ops):
            for table in (_NEGATED, _BOUNDARY):
                replacement = table.get(type(op))
                if replacement is None:
                    continue

                def build(i: int = i, replacement: type[ast.cmpop] = replacement) -> ast.AST:
                    mutated = copy.deepcopy(node)
                    mutated.ops[i] = replacement()
                    return mutated

                mutated = self._site(node, node, build)
                if mutated is not node:
                    result = mutated
        return result

    def _condition(self, node: ast.If | ast.While | ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        if _negatable_comparison(node.test):
            return node  # negating its operator is the same mutant
        original = copy.deepcopy(node.test)

        def build() -> ast.AST:
            return _negate(copy.deepcopy(original))

        node.test = self._site(node.test, original, build)  # type: ignore[assignment]
        return node

    visit_If = _condition
    visit_While = _condition
    visit_IfExp = _condition

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        ifs: list[ast.AST] = []
        for test in node.ifs:
            if _negatable_comparison(test):
                ifs.append(test)
                continue
            original = copy.deepcopy(test)

            def build(original: ast.expr = original) -> ast.AST:
                return _negate(copy.deepcopy(original))

            ifs.append(self._site(test, original, build))
        node.ifs = ifs  # type: ignore[assignment]
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return self._site(node, node, lambda: ast.BoolOp(op=other, values=node.values))

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        self.generic_visit(node)
        return self._site(node, node, ast.Pass)

    def visit_Return(self, node: ast.Return) -> ast.AST:
        value = node.value
        if value is None or (isinstance(value, ast.Constant) and value.value is None):
            return node
        if isinstance(value, ast.Constant) and isinstance(value.value, bool):
            flipped = ast.Constant(not value.value)
            return self._site(node, node, lambda: ast.Return(value=flipped))
        self.generic_visit(node)
        return self._site(node, node, lambda: ast.Return(value=ast.Constant(None)))

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            return self._site(node, node, lambda: ast.Constant(not value))
        if isinstance(value, int | float):
            return self._site(node, node, lambda: ast.Constant(value + 1))
        return node


_Decorated = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _strip_decorators(tree: ast.Module) -> list[tuple[_Decorated, list[ast.expr]]]:
    """Detach every decorator list, so the walk never enters one; return them to restore."""
    saved: list[tuple[_Decorated, list[ast.expr]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            saved.append((node, node.decorator_list))
            node.decorator_list = []
    return saved


def _walk(source: str, target: int | None) -> tuple[ast.Module, list[Mutant]]:
    tree = ast.parse(source)
    saved = _strip_decorators(tree)
    mutator = _Mutator(target)
    tree = mutator.visit(tree)
    for node, decorators in saved:
        node.decorator_list = decorators
    return tree, mutator.found


def mutants(source: str) -> list[Mutant]:
    """Every mutant of ``source``, in a fixed order."""
    return _walk(source, None)[1]


def mutate(source: str, index: int) -> str:
    """The source of mutant ``index``."""
    tree, found = _walk(source, index)
    if not 0 <= index < len(found):
        raise IndexError(f"no mutant {index} (there are {len(found)})")
    return ast.unparse(ast.fix_missing_locations(tree))
