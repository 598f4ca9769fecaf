"""The documentation's commands against the code (``tests/doc_commands.py``): a renamed
entry point, option or config key, or a missing config file, fails here."""
from __future__ import annotations

import pytest

from tests import doc_commands as D
from utils.config import REPO_ROOT


def all_commands() -> list:
    return [command for page in D.documentation() for command in D.fenced_commands(page)]


def test_every_documented_command_names_what_exists():
    commands = all_commands()
    checked = [c for c in commands if c.words[0] in D.PYTHON | {"bash", "torchrun"}]
    assert len(checked) > 40, "the documentation's bash blocks were not found"
    problems = [problem for command in commands for problem in D.check(command)]
    assert not problems, "\n".join(problems)


def test_the_readme_names_the_quick_start_commands():
    words = {" ".join(command.words) for command in D.fenced_commands(REPO_ROOT / "README.md")}
    assert "bash demo.sh" in words
    assert "python -m pytest -q" in words


@pytest.mark.parametrize("text, expected", [
    ("python search.py --checkpoint C --galery photos/ --sketch s.png",
     "search.py has no option --galery"),
    ("python train_adapt.py --config config/TriPEDES_pretrain.yaml train.epoch=3",
     "train.epoch is not a config key"),
    ("python train_token.py --config config/Market_finetuned.yaml",
     "no config file config/Market_finetuned.yaml"),
    ("python -m datasets.synthetic --out d --layouts manifest",
     "datasets.synthetic has no option --layouts"),
    ("python -m engine.comparison a b", "no module engine.comparison"),
    ("bash adaptation.sh data.empty_missing_backtrack=true",
     "data.empty_missing_backtrack is not a config key"),
    ("torchrun --nproc_per_node=2 search.py --index-onli --gallery g",
     "search.py has no option --index-onli"),
    ("pip install -r requirements-test.txt", "no requirement file requirements-test.txt"),
])
def test_a_planted_rename_is_caught(tmp_path, text, expected):
    page = tmp_path / "page.md"
    page.write_text(f"Text.\n\n```bash\n# a comment\n{text}  # trailing words\n```\n")
    problems = [problem for command in D.fenced_commands(page) for problem in D.check(command)]
    assert any(expected in problem for problem in problems), problems


def test_the_documented_forms_are_read_whole(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nM=x.jsonl   # a variable\n"
                    "python train_adapt.py --config config/TriPEDES_pretrain.yaml \\\n"
                    "    data.manifest=$M train.epochs=3 && python test.py --checkpoint c\n"
                    "```\n")
    commands = D.fenced_commands(page)
    assert [c.words[:2] for c in commands] == [("M=x.jsonl",), ("python", "train_adapt.py"),
                                               ("python", "test.py")]
    assert commands[1].words[-2:] == ("data.manifest=$M", "train.epochs=3")
    assert commands[1].source == "page.md:3"
    assert commands[2].words == ("python", "test.py", "--checkpoint", "c")
    assert not [problem for command in commands for problem in D.check(command)]
