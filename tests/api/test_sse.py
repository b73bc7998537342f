import pytest

from agentmill.api.sse import sse_comment, sse_message


def test_a_message_is_its_fields_then_a_blank_line() -> None:
    assert sse_message('{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_message("{}", event="run.done", id=42) == b"id: 42\nevent: run.done\ndata: {}\n\n"
    assert sse_message("[DONE]", event="x") == b"event: x\ndata: [DONE]\n\n"


def test_each_line_of_data_gets_its_own_data_field() -> None:
    assert sse_message("one\ntwo\r\nthree") == b"data: one\ndata: two\ndata: three\n\n"


def test_text_is_utf8() -> None:
    assert sse_message("héllo") == "data: héllo\n\n".encode()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"event": "a\nid: 9"}, "event"), ({"id": "1\r2"}, "id")],
)
def test_a_field_with_a_newline_is_refused(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ValueError, match=f"an SSE {field} must be one line"):
        sse_message("{}", **kwargs)


def test_a_comment_is_ignored_by_clients_but_keeps_the_line_open() -> None:
    assert sse_comment("keep-alive") == b": keep-alive\n\n"
    with pytest.raises(ValueError, match="an SSE comment must be one line"):
        sse_comment("a\nb")
