"""The documentation's code runs: every ```python block of README.md and of
docs/**/*.md, page by page, in one namespace per page (as a reader runs them
in order), in a temporary directory.

A page steers its run with HTML comments (invisible on the site and on
GitHub), each on a line of its own:

- `<!-- docs-test: skip -->` before a block: not run (a fragment such as a
  custom loop's `grads = ...`); the page says in words why it is a fragment.
- `<!-- docs-test: backends tensorflow -->`: the page runs only under these
  Keras backends (the others skip it, naming the page).
- `<!-- docs-test: requires onnxruntime ai_edge_litert -->`: modules the page
  needs; it is skipped without them (an optional extra).
- `<!-- docs-test: slow -->`: the page is one of the slow tests.

The README also keeps what a newcomer reads first: exactly the two commands,
at most 200 lines, and links that resolve in the repository.
"""

import pathlib
import re

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*([^>]*?)\s*-->")


def directives(text: str) -> dict[str, list[str]]:
    found = {}
    for name, value in DIRECTIVE.findall(text):
        found.setdefault(name, []).extend(value.split())
    return found


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The page's ```python blocks to run, each with its first line's number."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        if re.fullmatch(r"<!--\s*docs-test:\s*skip\s*-->", before.strip()):
            continue
        blocks.append((text[: match.start()].count("\n") + 2, match.group(2)))
    return blocks


def page_param(page: pathlib.Path):
    marks = [pytest.mark.slow] if "slow" in directives(page.read_text()) else []
    return pytest.param(page, id=str(page.relative_to(ROOT)), marks=marks)


RUNNABLE = [page_param(page) for page in PAGES if python_blocks(page.read_text())]


@pytest.mark.parametrize("page", RUNNABLE)
def test_page_code_runs(page, tmp_path, monkeypatch):
    text = page.read_text()
    found = directives(text)
    backends = found.get("backends")
    if backends and keras.backend.backend() not in backends:
        pytest.skip(f"{page.name} runs under {', '.join(backends)} only (it says why)")
    for module in found.get("requires", []):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    keras.utils.set_random_seed(0)
    namespace = {"__name__": f"docs_{page.stem}"}
    blocks = python_blocks(text)
    ran = 0
    for line, source in blocks:
        # The page and line a failure comes from are in the traceback: a
        # block that raises (its own asserts included) fails the test.
        code = compile("\n" * (line - 1) + source, str(page), "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
        ran += 1
    keras.backend.clear_session()
    assert ran == len(blocks) > 0, f"{page.name}: ran {ran} of its {len(blocks)} python blocks"


def test_code_blocks_name_a_known_language_and_are_closed():
    # A typo in a fence's language, or a fence left open (which swallows the
    # blocks after it), would silently leave blocks out.
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            assert match.group(1) in {"python", "bash", "text", "pycon", "yaml", "json"}, (
                f"{page.relative_to(ROOT)}: a ```{match.group(1)} block (name its language; "
                "only ```python runs)")
            assert not re.search(r"^```", match.group(2), re.M), (
                f"{page.relative_to(ROOT)}: a fence inside a block, near line "
                f"{text[: match.start()].count(chr(10)) + 1} (one left open?)")
        assert len(re.findall(r"^```", text, re.M)) == 2 * len(FENCE.findall(text))


def test_the_readme_is_short_and_gives_exactly_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    commands = [block.strip() for lang, block in FENCE.findall(text) if lang == "bash"]
    assert commands == ["pip install -e '.[demo]' && keras-regkit demo",
                        "pip install -e '.[test]' && python -m pytest"]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_in_the_repository(page):
    # mkdocs --strict checks the site's links between pages; this checks them
    # as files too (GitHub renders the same Markdown), README's included.
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        assert ROOT in path.parents, f"{page.relative_to(ROOT)} links outside the repository: {target}"


# Every public name of the README's table (as it stood before the docs site),
# each rendered on a reference page by a `::: path` line.
PUBLIC_NAMES = """
regularizers.L1 regularizers.L2 regularizers.ElasticNet regularizers.ExpAbs regularizers.GroupLasso
regularizers.Combined schedules.DelayedRamp callbacks.RegularizationScheduler callbacks.SparsityMonitor
callbacks.ShrinkPhase callbacks.ProximalUpdate apply_regularizers reapply_regularizers
remove_regularizers attach.Attachment shrink shrinking.ShrinkResult shrinking.SparsityTarget
shrinking.ToleranceClimb shrinking.ShrinkPolicy shrinking.Plateau shrinking.CubicRamp
shrinking.SparsitySchedule shrinking.ValidationCheck shrinking.AgreementGuard pruning.Curvature
pruning.Magnitude pruning.Score pruning.Wanda pruning.Weights pruning.Units pruning.Heads pruning.NM
pruning.Granularity bind_proximal proximal.ProximalConstraint prune release_zeros pruning.HoldZeros
pruning.PruneResult compact compacting.CompactResult dead_units sparsity_report stats.SparsityReport
stats.LayerStats iter_weights weights.WeightRef layers.register layers.LayerKind layers.Units
custom_objects search_strength search.StrengthSearchResult export deploy.ExportResult
deploy.ExportCheckError deploy.Runtime
""".split()


def test_every_public_name_has_a_reference_entry():
    rendered = set(re.findall(r"^::: keras_regkit\.(\S+)", "\n".join(
        page.read_text() for page in (DOCS / "reference").glob("*.md")), re.M))
    assert not [name for name in PUBLIC_NAMES if name not in rendered]
