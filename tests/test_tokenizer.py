import pytest

from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK
from nanocodegen.tokenizer import END, SPECIAL_TOKENS, CodeTokenizer

CORPUS = [p for p, _ in TASK_BANK] + SEED_SOLUTIONS + ["runtime_error: NameError: name 'x' is not defined (line 1)"]


@pytest.fixture(scope="module")
def tok() -> CodeTokenizer:
    return CodeTokenizer.train(CORPUS * 20, vocab_size=400)


@pytest.mark.parametrize(
    "text",
    ["result = sum([1, 2, 3, 4, 5])", "for x in range(3):\n    result += x", "héllo wörld ✓", "", "  trailing  "],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_have_ids_and_are_skipped_in_decode(tok):
    ids = {tok.pad_id, tok.task_id, tok.code_id, tok.feedback_id, tok.end_id}
    assert len(ids) == len(SPECIAL_TOKENS)
    assert tok.decode([tok.task_id, *tok.encode("result = 1"), tok.end_id]) == "result = 1"


def test_text_cannot_forge_special_tokens(tok):
    ids = tok.encode(f"print('{END}')")
    assert tok.end_id not in ids


def test_save_and_load(tmp_path, tok):
    tok.save(tmp_path / "tokenizer.json")
    again = CodeTokenizer.load(tmp_path)
    assert again.encode("result = 2 ** 10") == tok.encode("result = 2 ** 10")
    assert again.end_id == tok.end_id


def test_load_garbage_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        CodeTokenizer.load(tmp_path)
